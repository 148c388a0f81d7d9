"""The grading process of a ``python`` grader: stdlib only, run as a script (``python -I``),
never imported by TuneLab.

    argv: GRADER_FILE MEMORY_MB CPU_SECONDS

It limits itself first (address space, CPU time, file size, no core dumps), installs an audit
hook that refuses sockets, new processes and ctypes (a hook cannot be removed once added, PEP
578), and only then imports the operator's file, so even its import-time code runs fenced.
Then, per stdin line ``{"sample": {...}, "item": {...}}``, it writes one stdout line:
``{"score": x}`` or ``{"error": kind, "message": text}``.
"""

import json
import resource
import sys

BLOCKED = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "pty.",
    "ctypes.",
    "os.kill",
    "signal.pthread_kill",
)


def _limit(memory_mb: int, cpu_seconds: int) -> None:
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _audit(event: str, args) -> None:
    if event.startswith(BLOCKED):
        raise PermissionError(f"the grader sandbox does not allow {event}")


def _send(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    path, memory_mb, cpu_seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _limit(memory_mb, cpu_seconds)
    sys.addaudithook(_audit)
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("grader", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        grade = module.grade
        if not callable(grade):
            raise TypeError("grade is not a function")
    except BaseException as exc:  # anything the file does at import: report, then stop
        _send({"ready": False, "message": f"{type(exc).__name__}: {exc}"[:2000]})
        return
    _send({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            score = grade(request["sample"], request["item"])
            score = float(score)
            if score != score or score in (float("inf"), float("-inf")):
                _send({"error": "invalid_score", "message": f"grade returned {score}"})
            else:
                _send({"score": score})
        except (TypeError, ValueError) as exc:
            _send({"error": "invalid_score", "message": f"{type(exc).__name__}: {exc}"[:2000]})
        except BaseException as exc:  # MemoryError, PermissionError (network), SystemExit...
            _send({"error": "exception", "message": f"{type(exc).__name__}: {exc}"[:2000]})


if __name__ == "__main__":
    main()

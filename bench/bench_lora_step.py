"""Mixed-adapter LoRA cost in the serving runner: CPU time per decode step and per prefill,
base model only against rows spread over 4 and 8 LoRA adapters, old code against new.

    python bench/bench_lora_step.py [--precisions int8+bf16,bf16] [--threads 1] \
        [--steps 16] [--rounds 3] [--against /work/main] [--wall] [--flag NAME=VALUE]

Loads the default model in each precision with 8 random rank-8 adapters on every projection
(as ``bench_serving.py`` makes them), then per scenario prefills ~20-token prompts and times
``--steps`` decode steps of ``ModelRunner`` in CPU time: with ``--threads 1`` the thread's
(``time.thread_time``: steady on a machine shared with other work, unlike wall time); with more,
the process's (``time.process_time``: every torch thread's, their spin-waits included). Scenarios: 16 rows base only, 16 rows
over 4 adapters, 16 rows over 8 adapters (rows interleaved, as requests arrive), 1 row base,
1 row with an adapter. ``prefill`` is the CPU time of prefilling the 16 prompts; ``LoRA hooks``
the CPU time of a decode step's LoRA hooks alone (:func:`hooks_only`). Before the scenarios,
one short request per adapter warms the runner up as ``bench_serving.py``'s engine is warmed
up; ``first step`` is then the CPU time of a mixed scenario's first decode step (the first that
folds the LoRA products into the base ones after the loads: where the fold's operands are
packed then, not at the loads, this is where a serving benchmark's mixed run pays for it).

Switches of ``serving/adapters.py`` worth a side by side (``--against . --flag NAME=0``):
``DIRECT_FOLDS`` (lean decode steps call the folded products directly, not through each
layer's module), ``FOLD_PREFILL`` (prefills fold into the packed ``[W | B_cat]`` products),
``FOLD_A_ONE_THREAD`` (the A products on one thread; with ``--threads 2 --wall``).

``--against PATH`` runs the same measurement with the ``tunelab`` package of another checkout
(e.g. the main branch's) in alternating child processes, ``--rounds`` times each, and prints
both side by side; each figure is the best round (the least disturbed by other processes).
Without it, only this checkout is measured. ``--flag NAME=VALUE`` sets a module constant of
``tunelab.serving.adapters`` (an int) in this checkout's runs only: ``--against . --flag
FOLD_A_ONE_THREAD=0`` measures a switch off against on in one command. ``--wall``: wall time
instead of CPU time (for several threads on a quiet machine: CPU time counts the threads' spin
in OpenMP's barriers, wall time is what a user waits).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "16 base": [None] * 16,
    "16 mixed/4": [f"adapter-{i % 4}" for i in range(16)],
    "16 mixed/8": [f"adapter-{i % 8}" for i in range(16)],
    "1 base": [None],
    "1 adapter": ["adapter-0"],
}


def measure(
    precision: str, threads: int, steps: int, adapters: Path, wall: bool = False
) -> dict[str, float]:
    """Milliseconds of CPU time (``wall``: wall time): per decode step, and per prefill, for
    each scenario."""
    import torch

    from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
    from tunelab.serving.adapters import AdapterCache
    from tunelab.serving.generation import GenerationParams
    from tunelab.serving.quantize import apply_precision

    try:
        from tunelab.serving.precision_choice import choose_precision
    except ImportError:  # a checkout from before precision_choice.py (--against)
        from tunelab.serving.quantize import choose_precision
    from tunelab.serving.runner import ModelRunner, RowGroup

    torch.set_num_threads(threads)
    clock = time.perf_counter if wall else time.thread_time if threads == 1 else time.process_time
    base = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(base.path)
    model = load_causal_lm(base.path).eval()
    choice = choose_precision(precision, model)
    model = apply_precision(model, choice.precision, dense_rows=choice.dense_rows)
    folders = sorted(adapters.iterdir())
    cache = AdapterCache(model, max_adapters=len(folders))
    for folder in folders:
        cache.ensure(folder.name, folder)
    runner = ModelRunner(model, tokenizer, adapters=cache)
    out: dict[str, float] = {}
    with torch.inference_mode():
        # Warm up as bench_serving.py's engine does: one short request per adapter, then one
        # without (a row of one adapter does not fold: see "first step" below).
        short = GenerationParams(temperature=0, max_output_tokens=2)
        for key in [f.name for f in folders] + [None]:
            runner.generate([RowGroup([1, 2, 3], short, adapter_key=key)])
    params = GenerationParams(temperature=0, max_output_tokens=steps + 8)
    with torch.inference_mode():
        for name, keys in SCENARIOS.items():
            groups = [
                RowGroup([1] + list(range(100 + i, 118 + i + i % 5)), params, adapter_key=k)
                for i, k in enumerate(keys)
            ]
            for g in groups:
                if g.adapter_key is not None:
                    cache.pin(g.adapter_key)
            start = clock()
            runner.start(groups)
            prefill = clock() - start
            start = clock()
            runner.step()
            first = clock() - start
            for _ in range(2):  # warm-up: first calls of each shape
                runner.step()
            start = clock()
            for _ in range(steps):
                runner.step()
            out[f"{name} step"] = (clock() - start) / steps * 1e3
            if len(keys) > 1:
                out[f"{name} prefill"] = prefill * 1e3
            if "mixed" in name:
                out[f"{name} first step"] = first * 1e3
            runner.reset()
            if "mixed" in name:
                out[f"{name} LoRA hooks"] = hooks_only(cache, keys, clock, steps)
    return out


def fold(layer, module, x) -> tuple:
    """The layer's input after its LoRA pre-hook where it folds the B product into the base
    product (``_LayerLora.fold``: its A product and ``[x | h]``; the B product then runs inside
    the base product, which :func:`hooks_only` does not time), else ``(x,)``."""
    if getattr(layer, "foldable", False):  # a checkout without the fold: plain hooks
        return layer.fold(module, (x,)) or (x,)
    return (x,)


def hooks_only(cache, keys: list, clock, steps: int) -> float:
    """Milliseconds of CPU time per decode step of the LoRA hooks alone: every hooked layer's
    hook called in model order on a decode step's shapes (one token per row; siblings of one
    block get one input tensor, as the model calls them), without the base products around
    them: the LoRA cost with less of the noise of a shared machine. Where the B products are
    folded into the base products, only the A side is counted here, through each layer's
    module path (a lean decode step calls the same products directly, without that path's
    Python: ``AdapterCache.decode_folds``): compare the steps."""
    import torch

    rows = len(keys)
    modules = dict(cache.model.named_modules())
    inputs: dict[tuple, torch.Tensor] = {}
    calls = []
    for name, layer in cache._layers.items():
        module = modules[name]
        parent = name.rpartition(".")[0]
        key = (parent, module.in_features)
        if key not in inputs:
            inputs[key] = torch.randn(rows, 1, module.in_features).to(module.weight.dtype)
        out = torch.zeros(rows, 1, module.out_features, dtype=module.weight.dtype)
        calls.append((layer, module, inputs[key], out))
    # A shared A product is kept for the next sibling called on the same input tensor; these
    # inputs are the same tensors every step, so each step forgets it, as a new step's fresh
    # inputs would (else every step after the first skips the q/k/v and gate/up A products).
    groups = {id(layer.group): layer.group for layer, *_ in calls if layer.group is not None}
    cache.select(keys)
    with torch.inference_mode():
        for _ in range(2):  # warm-up: masks and plans built
            for g in groups.values():
                g._last = g._last_low = None
            for layer, module, x, out in calls:
                layer(module, fold(layer, module, x), out)
        start = clock()
        for _ in range(steps):
            for g in groups.values():
                g._last = g._last_low = None
            for layer, module, x, out in calls:
                layer(module, fold(layer, module, x), out)
        return (clock() - start) / steps * 1e3


def child(args) -> None:
    import tunelab
    from tunelab.serving import adapters

    for flag in args.flag:
        name, _, value = flag.partition("=")
        if not hasattr(adapters, name):
            raise SystemExit(f"--flag {flag}: tunelab.serving.adapters has no {name}")
        setattr(adapters, name, type(getattr(adapters, name))(int(value)))
    result = {
        p: measure(p, args.threads, args.steps, Path(args.adapters), args.wall)
        for p in args.precisions.split(",")
    }
    print(json.dumps({"tunelab": tunelab.__file__, "ms": result}))


def run_child(args, pythonpath: Path, adapters: Path, flags: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--adapters",
        str(adapters),
        "--precisions",
        args.precisions,
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        *(["--wall"] if args.wall else []),
        *(f"--flag={flag}" for flag in flags),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {pythonpath} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="int8+bf16,bf16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout to measure in turn")
    parser.add_argument("--wall", action="store_true", help="wall time, not CPU time")
    parser.add_argument(
        "--flag",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set tunelab.serving.adapters.NAME (an int) in this checkout's runs",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_serving import make_adapters

    from tunelab.models import resolve_model

    checkouts = {"new": ROOT}
    if args.against is not None:
        checkouts = {"old": args.against.resolve(), "new": ROOT}
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  threads {args.threads}, {args.steps} steps, "
        f"best of {args.rounds} rounds, {'wall' if args.wall else 'CPU'} time; new: "
        f"{' '.join(args.flag) or 'as committed'}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    best: dict[str, dict[str, dict[str, float]]] = {k: {} for k in checkouts}
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        adapters = Path(tmp) / "adapters"
        adapters.mkdir()
        make_adapters(resolve_model("smollm2-135m-instruct").path, adapters, 8)
        for r in range(args.rounds):
            for label, path in checkouts.items():
                got = run_child(args, path, adapters, args.flag if label == "new" else [])
                print(f"  round {r + 1} {label} ({got['tunelab']}): {got['ms']}", flush=True)
                for precision, figures in got["ms"].items():
                    mine = best[label].setdefault(precision, {})
                    for key, ms in figures.items():
                        mine[key] = min(ms, mine.get(key, float("inf")))
    labels = list(checkouts)
    print("\n| precision | measure | " + " | ".join(f"{k} ms" for k in labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for precision in args.precisions.split(","):
        for key in best[labels[-1]][precision]:
            cells = " | ".join(f"{best[k][precision].get(key, float('nan')):.1f}" for k in labels)
            print(f"| {precision} | {key} | {cells} |")
        for label in labels:
            b = best[label][precision]
            ratios = ", ".join(
                f"{mix}: {b['16 base step'] / b[f'16 {mix} step']:.2f}x"
                for mix in ("mixed/4", "mixed/8")
            )
            print(f"{label} {precision}: base-only step time / mixed step time: {ratios}")


if __name__ == "__main__":
    main()

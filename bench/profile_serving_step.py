"""Time the serving runner's decode steps in several base-model precisions, side by side.

    PYTHONPATH=. python bench/profile_serving_step.py [--rows 1] [--steps 40] [--threads 1] \
        [--variants bf16,bf16:plain,int8+bf16,int8+bf16:plain,fp32] [--profile bf16]

Every variant is built in this one process (``PREC`` prepacked as the engine serves it,
``PREC:plain`` without oneDNN prepacking: the code before prepacking; ``PREC:unfused`` with
every decode step calling the layers one by one, as a step where a row has an adapter does:
the code before ``LeanDecoder``'s fused int8 products) and their decode steps
alternate, one step of each in turn, so a machine whose load changes slows all of them alike.
Reported: the median and minimum CPU time of the engine thread per step (``time.thread_time``),
which other processes' load changes far less than wall time, and the median wall time (the
figure that counts with ``--threads 2``, whose second thread's CPU the first does not see). ``--profile VARIANT`` also prints
torch.profiler's self-CPU table of 10 steps of that variant, grouped by operator and shape.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
from tunelab.serving.generation import GenerationParams
from tunelab.serving.quantize import apply_precision
from tunelab.serving.runner import ModelRunner, RowGroup

PROMPT = "Write a short poem about owls in the night forest."


def build(model_dir, tokenizer, variant: str) -> ModelRunner:
    precision, _, option = variant.partition(":")
    if option not in ("", "plain", "unfused"):
        raise SystemExit(f"variant {variant!r}: the option after ':' is 'plain' or 'unfused'")
    model = apply_precision(load_causal_lm(model_dir).eval(), precision, prepack=option != "plain")
    runner = ModelRunner(model, tokenizer)
    if option == "unfused" and runner._lean is not None:
        runner._lean.fuse = False
    runner.eos_ids = frozenset()  # every step decodes: no row finishes early
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="int8+bf16,int8+bf16:unfused,bf16")
    parser.add_argument("--rows", type=int, default=1, help="rows of the batch (streams)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--base", default="smollm2-135m-instruct", help="a catalog base model")
    parser.add_argument("--profile", help="a variant to profile with torch.profiler")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.base).path
    tokenizer = load_tokenizer(model_dir)
    variants = [v for v in args.variants.split(",") if v]
    runners = {v: build(model_dir, tokenizer, v) for v in variants}
    prompt = next(iter(runners.values())).render([{"role": "user", "content": PROMPT}])
    params = GenerationParams(temperature=0, max_output_tokens=args.steps + 32)
    for runner in runners.values():
        runner.start([RowGroup(prompt=prompt, params=params, n=args.rows)])
        for _ in range(3):  # warm-up: oneDNN kernel generation, first-call dispatch
            runner.step()
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.steps):
        for v, runner in runners.items():
            start, wall = time.thread_time(), time.perf_counter()
            runner.step()
            seconds[v].append(time.thread_time() - start)
            walls[v].append(time.perf_counter() - wall)
    print(f"{args.rows} row(s), {args.threads} thread(s), {args.steps} steps each, alternating:")
    for v, s in seconds.items():
        med = statistics.median(s)
        print(
            f"  {v:18s} {med * 1e3:7.2f} ms/step median ({min(s) * 1e3:.2f} min) thread CPU"
            f"  = {args.rows / med:6.1f} tokens per CPU-second;"
            f"  wall {statistics.median(walls[v]) * 1e3:7.2f} ms/step median"
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        runner = runners.get(args.profile) or build(model_dir, tokenizer, args.profile)
        if not runner.rows:
            runner.start([RowGroup(prompt=prompt, params=params, n=args.rows)])
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(10):
                runner.step()
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40
        )
        print(table)


if __name__ == "__main__":
    main()

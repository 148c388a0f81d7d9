"""Data-parallel scaling of `tune sft`: 1 process against N processes on this machine.

    python bench/bench_scale.py [--steps 12] [--batch-size 8] [--processes 2] \
        [--data examples/ticket-routing/train.jsonl] [--model smollm2-135m-instruct]

Each configuration trains the same adapter (same model, data, batch order, global batch size,
seed, fp32 so both compute alike) in a fresh subprocess, one after the other:

- ``1 process``: all the machine's cores in one process (torch's default threads);
- ``N processes``: rank 0 plus N-1 ranks started by tunelab.training.launch, as a job with
  ``processes=N`` runs, each with cores/N threads, the batch split between them and the LoRA
  gradients averaged over gloo once per step.

What is measured, from the run's own metrics (metrics.jsonl, rank 0):
- trained tokens/s: the global batch's real tokens / the step's wall time, median over the
  steps after the first (the first includes one-off allocations);
- communication per step (``comm_seconds``): the wall time of the one all-reduce per step, which
  includes waiting for the slower rank; and, separately, ``allreduce_seconds``: an all-reduce of
  a buffer the size of the LoRA gradients between 2 idle processes, the price of the bytes alone;
- the largest difference between the two adapters (they should agree to float rounding).

On a machine with 2 cores, 2 processes of 1 thread each are not expected to beat 1 process of 2
threads: the matmuls already use both cores, and data parallelism only adds the all-reduce and
the duplicated per-process work. The numbers say how much that costs here; the gain appears
with more cores or machines than one process can use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def child(args: argparse.Namespace) -> None:
    """One configuration, in its own process: train, then print the run's numbers as JSON."""
    from tunelab.configs import SFTConfig
    from tunelab.recipes.sft import train_sft
    from tunelab.training.launch import run_recipe

    config = SFTConfig(
        base_model=args.model,
        train_steps=args.steps,
        batch_size=args.batch_size,
        checkpoint_every_steps=10_000,
        precision="fp32",
        processes=args.processes,
        seed=3,
    )
    run_dir = Path(args.out) / f"p{args.processes}"
    result = run_recipe(train_sft, config, Path(args.data), run_dir, processes=args.processes)
    rows = [json.loads(x) for x in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train_loss" in r][1:]
    print(
        json.dumps(
            {
                "processes": args.processes,
                "tokens_per_second": statistics.median(
                    r["tokens"] / r["step_seconds"] for r in rows
                ),
                "step_seconds": statistics.median(r["step_seconds"] for r in rows),
                "comm_seconds": statistics.median(r.get("comm_seconds", 0.0) for r in rows),
                "adapter": str(result.adapter_dir / "adapter_model.safetensors"),
                "final_train_loss": result.final_train_loss,
            }
        )
    )


def allreduce_child(size: int, rank: int, port: int, repeats: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buf = torch.zeros(size, dtype=torch.float32)
    dist.all_reduce(buf)  # warm-up: connections
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(buf)
    if rank == 0:
        print(json.dumps({"allreduce_seconds": (time.perf_counter() - start) / repeats}))
    dist.destroy_process_group()


def lora_numel(model: str) -> int:
    from tunelab.models import resolve_model
    from tunelab.training.lora import lora_model

    peft = lora_model(resolve_model(model).path, 8, 16)
    return sum(p.numel() for p in peft.parameters() if p.requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--data", default=str(ROOT / "examples/ticket-routing/train.jsonl"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--allreduce", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.allreduce:
        return allreduce_child(*args.allreduce, repeats=20)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = []
    with tempfile.TemporaryDirectory() as out:
        for processes in (1, args.processes):
            cmd = [sys.executable, __file__, "--child", "--out", out,
                   "--processes", str(processes), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--data", args.data,
                   "--model", args.model]  # fmt: skip
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        import torch
        from safetensors.torch import load_file

        a, b = (load_file(r["adapter"]) for r in results)
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)

    numel = lora_numel(args.model)
    port = 29000 + os.getpid() % 1000
    ranks = [
        subprocess.Popen(
            [sys.executable, __file__, "--allreduce", str(numel), str(r), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    allreduce = json.loads(ranks[0].communicate()[0].strip().splitlines()[-1])
    ranks[1].wait()

    load = os.getloadavg()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"load average at the end {load[0]:.1f}")  # fmt: skip
    print(f"model {args.model}, {args.steps} steps of {args.batch_size} examples, fp32\n")
    print("| processes | threads each | trained tokens/s | step s | all-reduce per step s |")
    print("|---|---|---|---|---|")
    cores = os.cpu_count() or 1
    for r in results:
        print(
            f"| {r['processes']} | {max(1, cores // r['processes'])} | "
            f"{r['tokens_per_second']:.0f} | {r['step_seconds']:.3f} | "
            f"{r['comm_seconds']:.4f} |"
        )
    print(
        f"\nLoRA gradients: {numel:,} values ({numel * 4 / 1e6:.1f} MB as fp32 on the wire); "
        f"a bare all-reduce of them between 2 processes: {allreduce['allreduce_seconds']:.4f} s"
    )
    print(f"largest adapter difference, 1 vs {args.processes} processes: {diff:.2e}")


if __name__ == "__main__":
    main()

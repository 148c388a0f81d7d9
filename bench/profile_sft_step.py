"""Where a `tune sft` training step spends its time on this CPU: the step of
tunelab.recipes.sft.train_sft (LoRA forward, completion loss, backward, clipping, AdamW), timed
after warm-up and then under torch.profiler, ops sorted by their own CPU time.

    python bench/profile_sft_step.py [--steps 10] [--profile-steps 5] [--precision auto] \
        [--data examples/ticket-routing-chat/train.jsonl]

It prints tokens/s of the bare loop (no metrics, checkpoints or evaluation) for train_sft's
model (PEFT LoRA switched to tunelab.training.fused_lora, each batch's shared prompt prefix
computed once, fused AdamW) and, step by step in turn on the same batches, for plain PEFT LoRA
with torch's default AdamW, the setup before the fused path (and train_sft's model in fp32 too,
when its precision is bf16); then, for train_sft's model, the share of the time in matrix
multiplies, their GFLOP/s, and the upper bound on tokens/s if everything but the matrix
multiplies took no time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from tunelab.configs.sft import SFTConfig
from tunelab.data.batching import collate, epoch_batches
from tunelab.data.validation import load_supervised
from tunelab.models import load_tokenizer, resolve_model
from tunelab.training.fused_lora import fuse_lora_for_training
from tunelab.training.lora import adamw, lora_model
from tunelab.training.precision import matmul_row_multiple, resolve_precision
from tunelab.training.prefix_sharing import completion_loss_of

WARMUP_STEPS = 3
"""Untimed first steps: allocations and kernel choices for the first shapes happen there."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--data", default="examples/ticket-routing-chat/train.jsonl")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()

    config = SFTConfig()
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    train, _ = load_supervised(Path(args.data), tokenizer, max_seq_length=config.max_seq_length)
    setups = {}
    precision = resolve_precision(args.precision, 576)
    dtypes = {"fused": torch.bfloat16 if precision == "bf16" else torch.float32}
    if precision == "bf16":
        dtypes["fused-fp32"] = torch.float32
    # train_sft rounds each step's token count for per-shape bf16 kernels; so does this loop
    row_multiples = {"fused": matmul_row_multiple(precision)}
    for name in [*dtypes, "peft"]:
        model = lora_model(base.path, config.adapter_size, config.lora_alpha)
        params = [p for p in model.parameters() if p.requires_grad]
        if name in dtypes:
            assert fuse_lora_for_training(model, dtypes[name]), "the default model should fuse"
            optimizer = adamw(params, config.learning_rate)
        else:
            optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
        model.train()
        setups[name] = (model, params, optimizer)
    lengths = [len(e.input_ids) for e in train]
    batches = [
        collate([train[i] for i in batch], tokenizer.pad_token_id)
        for epoch in range(4)
        for batch in epoch_batches(lengths, config.batch_size, config.seed, epoch)
    ]
    needed = WARMUP_STEPS + args.steps + args.profile_steps
    if len(batches) < needed:
        raise SystemExit(f"{args.data} gives {len(batches)} batches; {needed} are needed")

    def step(batch, name: str = "fused") -> None:  # the loop body of train_sft
        model, params, optimizer = setups[name]
        # train_sft computes each batch's shared prompt prefix once on the fused path
        loss, _, _ = completion_loss_of(
            model, batch, share_prefix=name != "peft", row_multiple=row_multiples.get(name, 1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:WARMUP_STEPS]:
        for name in setups:
            step(batch, name)
    timed = batches[WARMUP_STEPS : WARMUP_STEPS + args.steps]
    seconds = dict.fromkeys(setups, 0.0)
    for batch in timed:  # alternate, so that both see the same machine load
        for name in setups:
            start = time.perf_counter()
            step(batch, name)
            seconds[name] += time.perf_counter() - start
    tokens = sum(b.tokens for b in timed)
    rates = {name: tokens / s for name, s in seconds.items()}
    print(
        f"{torch.get_num_threads()} threads; bare loop ({args.steps} steps after {WARMUP_STEPS} "
        f"of warm-up): train_sft ({precision}) {rates['fused']:.1f} tokens/s, plain PEFT LoRA "
        f"(fp32) {rates['peft']:.1f} tokens/s ({rates['fused'] / rates['peft']:.2f}x)"
    )
    if "fused-fp32" in rates:
        print(
            f"  train_sft with --precision fp32: {rates['fused-fp32']:.1f} tokens/s "
            f"(bf16 is {rates['fused'] / rates['fused-fp32']:.2f}x)"
        )

    profiled = batches[WARMUP_STEPS + args.steps : needed]
    # Times from the profiler, FLOPs from a separate pass: the profiler's own FLOP counting
    # (with_flops) slows every op down about 2.5x and would distort the split.
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in profiled:
            step(batch)
    with FlopCounterMode(display=False) as counter:
        for batch in profiled:
            step(batch)
    ops = prof.key_averages()
    total = sum(op.self_cpu_time_total for op in ops)
    mm_names = {"mm", "addmm", "bmm"}
    mm_time = sum(op.self_cpu_time_total for op in ops if op.key.removeprefix("aten::") in mm_names)
    by_op = counter.get_flop_counts()["Global"]
    mm_flops = sum(n for op, n in by_op.items() if str(op).split(".")[-1] in mm_names)
    p_tokens = sum(b.tokens for b in profiled)
    print(ops.table(sort_by="self_cpu_time_total", row_limit=15))
    print(
        f"matrix multiplies: {100 * mm_time / total:.0f}% of the step time, "
        f"{mm_flops / (mm_time / 1e6) / 1e9:.0f} GFLOP/s while they run"
    )
    print(
        f"ceiling with everything else free: {p_tokens / (mm_time / 1e6):.0f} tokens/s "
        f"(profiled: {p_tokens / (total / 1e6):.0f} tokens/s under the profiler)"
    )


if __name__ == "__main__":
    main()

"""`tune sft` against TRL's SFTTrainer with PEFT LoRA, on the same model, data and CPU.

    python bench/bench_sft.py [--steps 30] [--batch-size 8] [--rank 8] [--bf16-steps N] \
        [--data examples/ticket-routing-chat/train.jsonl] \
        [--validation examples/ticket-routing-chat/validation.jsonl]

Up to six training runs, one after the other, each in a fresh subprocess (so that peak RSS is
its own and no run inherits another's warm caches or threads):

- ``tunelab``         tunelab.recipes.sft.train_sft, as ``tunelab tune sft`` runs it, with its
                      default ``--precision auto``: bf16 mixed precision where this CPU runs bf16
                      matmuls clearly faster than fp32 (measured), fp32 elsewhere;
- ``tunelab-fp32``    the same with ``--precision fp32``; run only when ``auto`` chose bf16;
- ``trl-defaults``    trl.SFTTrainer + peft.LoraConfig, with TRL's defaults exactly as a CPU user
                      gets them (``use_cpu=True`` is required on a machine without a GPU). They
                      include ``bf16=True``: autocast to bfloat16. A CPU with native bf16
                      (AVX512-BF16 or AMX) runs it at a usable speed, and this run trains all the
                      steps; one without (AVX2 only) emulates it at ~150 s a step, so there it
                      trains only 3 steps (``--bf16-steps`` overrides): enough for its rate, not
                      for an eval loss;
- ``trl-fp32``        TRL's defaults with ``bf16=False``, the setting a CPU user switches to
                      first (activation checkpointing still on, as TRL sets it). When
                      trl-defaults could not train every step, the issue's "TRL defaults" target
                      is checked against this run instead, the stronger peer there;
- ``trl-no-ckpt``     the same with activation checkpointing off;
- ``trl-bf16-no-ckpt`` TRL's defaults with only activation checkpointing off (bf16 kept); run
                      only with native bf16. The "4x TRL without checkpointing" target is checked
                      against the faster of the two no-checkpointing runs: TRL's fastest plain
                      setting on this CPU.

Everything that defines the optimisation is the same for all runs: base model, examples,
LoRA rank/alpha/targets/dropout, batch size, steps, learning rate and its schedule (linear warm-up
over the same number of steps, then linear decay to zero), AdamW with no weight decay, gradient
clipping at 1.0, seed. The loss is on model turns only: TRL gets the conversational
prompt-completion format, for which its default ``completion_only_loss`` is on.

What is measured:
- trained tokens/s: real (non-padding) tokens of the batches trained on / seconds inside the
  optimizer steps (TuneLab: ``usage["trained_tokens"] / usage["train_seconds"]``; TRL: the
  attention-mask sum of its batches / the summed on_step_begin..on_step_end time, which leaves
  out its data loading and logging, so the comparison is if anything generous to TRL);
- eval loss: mean cross-entropy per model-turn token on the validation file, computed by the same
  function (tunelab.training.eval_loss.evaluate, fp32) for every run and for the base model;
- useful FLOPs: torch.utils.flop_counter.FlopCounterMode over TuneLab's own training step
  (decoder forward, completion loss, backward) on exactly the batches TuneLab trained on, as
  train_sft computes it (fused LoRA path, each batch's shared prompt prefix computed once: the
  FLOPs it skips are not counted as work done; nor are those of the dead tokens that round a
  bf16 step's length up); the optimizer is not counted. Divided by the trained tokens, the
  same FLOPs-per-token prices every run's tokens, so TRL's "effective FLOP/s" is useful work
  per second, not work it did;
- the fp32 matmul peak: best GFLOP/s of timed torch.mm / F.linear at the model's shapes and at
  1024^3, measured in this process before and after the runs (and in each worker around its
  run); the highest value observed is the denominator, so the fraction is conservative. The
  issue sets the 50% target against this fp32 peak whatever precision TuneLab trains in; the
  bf16 peak (same shapes, this process) is printed beside it, and ``tunelab-fp32`` shows the
  fraction an fp32 run reaches.

The machine may be shared: compare the ratios, and look at the matmul figures printed per run to
see whether something else was using the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

MODEL = "smollm2-135m-instruct"
RUNS = ["tunelab", "tunelab-fp32", "trl-defaults", "trl-fp32", "trl-no-ckpt", "trl-bf16-no-ckpt"]
TUNELAB_RUNS = ("tunelab", "tunelab-fp32")
TRL_RUNS = {  # name -> (bf16 as TRL sets it?, activation checkpointing as TRL sets it?)
    "trl-defaults": (True, True),
    "trl-fp32": (False, True),
    "trl-no-ckpt": (False, False),
    "trl-bf16-no-ckpt": (True, False),
}


# ------------------------------------------------------------------------- measuring the machine
def matmul_gflops(repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s (fp32 unless told) over a square 1024 matmul and the model's own linear shapes.

    The model's shapes: ~512 tokens (a batch of 8 short chats) through a 576 -> 576 projection
    and the 576 <-> 1536 MLP. Best of ``repeats`` timings each: contention only makes it lower.
    """
    best = 0.0
    cases = [((1024, 1024), (1024, 1024), "mm")] + [
        ((512, k), (n, k), "linear") for k, n in [(576, 1536), (1536, 576), (576, 576)]
    ]
    for a_shape, b_shape, kind in cases:
        a, b = torch.randn(*a_shape).to(dtype), torch.randn(*b_shape).to(dtype)
        op = partial(torch.mm if kind == "mm" else F.linear, a, b)
        flops = 2 * a_shape[0] * a_shape[1] * b_shape[0 if kind == "linear" else 1]
        calls = max(1, int(4e9 / flops))  # ~10-20 ms per timing at this machine's speed
        op()  # warm-up: first call allocates and picks a kernel
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                op()
            best = max(best, calls * flops / (time.perf_counter() - start) / 1e9)
    return best


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (so TRL's bf16 default is usable)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ------------------------------------------------------------------------- shared setup
def load_common(args):
    """Base model path, tokenizer, and the train/validation examples as TuneLab encodes them."""
    from tunelab.data.validation import load_supervised
    from tunelab.models import load_tokenizer, resolve_model

    base = resolve_model(MODEL)
    tokenizer = load_tokenizer(base.path)
    train, _ = load_supervised(args.data, tokenizer, max_seq_length=1024)
    val, _ = load_supervised(args.validation, tokenizer, max_seq_length=1024)
    return base, tokenizer, train, val


def eval_loss(model, val, batch_size: int, pad_id: int) -> float:
    """The one eval-loss function for every run: TuneLab's, in fp32, on the model's decoder."""
    from tunelab.training.eval_loss import evaluate

    # A PeftModel forwards these to the wrapped transformers model; the LoRA layers are inside.
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    return evaluate(model, decoder, head, val, batch_size, pad_id)["eval_loss"]


def tunelab_config(args):
    from tunelab.configs.sft import SFTConfig

    return SFTConfig(
        base_model=MODEL,
        train_steps=args.steps,
        batch_size=args.batch_size,
        adapter_size=args.rank,
        precision="fp32" if args.worker == "tunelab-fp32" else "auto",
    )


def tunelab_batches(args, train, pad_id: int):
    """The batches train_sft trains on, rebuilt as its ``batch_at`` builds them."""
    from tunelab.data.batching import collate, epoch_batches

    config = tunelab_config(args)
    lengths = [len(e.input_ids) for e in train]
    per_epoch = -(-len(train) // config.batch_size)
    orders: dict[int, list[list[int]]] = {}
    batches = []
    for step in range(config.total_steps(len(train))):
        epoch, index = divmod(step, per_epoch)
        if epoch not in orders:
            orders[epoch] = epoch_batches(lengths, config.batch_size, config.seed, epoch)
        batches.append(collate([train[i] for i in orders[epoch][index]], pad_id))
    return batches


# ------------------------------------------------------------------------- the runs (workers)
def run_tunelab(args) -> dict:
    from peft import PeftModel

    from tunelab.models import load_causal_lm
    from tunelab.recipes.sft import train_sft

    base, tokenizer, _, val = load_common(args)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train_sft(tunelab_config(args), Path(args.data), run_dir=Path(tmp) / "run")
        wall = time.perf_counter() - start
        rss = result.usage["peak_rss_mb"]  # before the evaluation below loads a second model
        model = PeftModel.from_pretrained(load_causal_lm(base.path), result.adapter_dir)
        loss = eval_loss(model, val, args.batch_size, tokenizer.pad_token_id)
    return {
        "steps": result.steps,
        "tokens": result.usage["trained_tokens"],
        "train_seconds": result.usage["train_seconds"],
        "wall_seconds": wall,
        "eval_loss": loss,
        "peak_rss_mb": rss,
        "precision": result.usage["precision"],
    }


def prompt_completion_rows(path: str, lines: set[int]) -> list[dict]:
    """TRL's conversational prompt-completion format: the completion is the last model turn,
    the prompt everything before it (so in a multi-turn example the earlier model turns are
    context, not targets)."""
    from tunelab.data.formats import parse_line

    rows = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if number not in lines:  # keep exactly the examples TuneLab kept
                continue
            messages = parse_line(text, number).to_messages()
            rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def run_trl(args, name: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunelab.models import load_causal_lm
    from tunelab.training.lora import LORA_TARGETS

    base, tokenizer, train, val = load_common(args)
    config = tunelab_config(args)
    rows = prompt_completion_rows(args.data, {e.line for e in train})

    class StepTimer(TrainerCallback):
        """Seconds inside the optimizer steps: forward, backward, clipping, AdamW, scheduler."""

        seconds, steps, started = 0.0, 0, 0.0

        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds += time.perf_counter() - self.started
            self.steps += 1

    timer = StepTimer()
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing; TRL's default
    # (True) still arrives under the old name, the new name wins when both are given.
    keep_bf16, keep_checkpointing = TRL_RUNS[name]
    overrides: dict = {} if keep_bf16 else {"bf16": False}
    if not keep_checkpointing:
        overrides["activation_checkpointing"] = False
    steps = config.total_steps(len(train))
    if keep_bf16:
        # bf16 without native support (AVX2 CPUs) takes ~150 s a step
        steps = min(steps, args.bf16_steps)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trl_config = SFTConfig(
            output_dir=tmp,
            use_cpu=True,  # without it, TRL's default bf16=True refuses to start on a CPU
            report_to="none",
            save_strategy="no",
            max_steps=steps,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            lr_scheduler_type="linear",
            # TuneLab's warm-up is max(1, int(ratio * steps)) steps; give TRL the same count
            # (transformers would round the ratio up instead).
            warmup_steps=max(1, int(config.warmup_ratio * config.total_steps(len(train)))),
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=config.seed,
            **overrides,
        )
        trainer = SFTTrainer(
            # The model object rather than its path: TRL picks the class from config.json's
            # "architectures", which the converted default model's config lacks.
            model=load_causal_lm(base.path),
            processing_class=tokenizer,
            args=trl_config,
            train_dataset=Dataset.from_list(rows),
            peft_config=LoraConfig(
                r=config.adapter_size,
                lora_alpha=config.lora_alpha,
                lora_dropout=0.0,
                target_modules=LORA_TARGETS,
                task_type="CAUSAL_LM",
            ),
            callbacks=[timer],
        )
        # Count the real tokens of each batch as the collator builds it. accelerate's loader
        # fetches one batch ahead, so only the first max_steps batches were trained on.
        batches: list[tuple[int, int]] = []
        collator = trainer.data_collator

        def counting_collator(examples):
            out = collator(examples)
            batches.append((int(out["attention_mask"].sum()), out["attention_mask"].numel()))
            return out

        trainer.data_collator = counting_collator
        output = trainer.train()
        wall = time.perf_counter() - start
        rss = peak_rss_mb()
        trained = batches[: timer.steps]
        loss = eval_loss(trainer.model, val, args.batch_size, tokenizer.pad_token_id)
    return {
        "steps": timer.steps,
        "tokens": sum(real for real, _ in trained),
        "padded_tokens": sum(padded for _, padded in trained),
        "trl_logged_tokens": getattr(trainer, "_total_train_tokens", None),
        "train_seconds": timer.seconds,
        "train_runtime": output.metrics.get("train_runtime"),
        "wall_seconds": wall,
        "eval_loss": loss,
        "peak_rss_mb": rss,
        "defaults": {
            k: getattr(trl_config, k)
            for k in [
                "activation_checkpointing",
                "bf16",
                "padding_free",
                "packing",
                "max_length",
                "completion_only_loss",
                "optim",
            ]
        },
    }


def run_reference(args) -> dict:
    """The base model's eval loss, and the useful FLOPs of TuneLab's training step."""
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    from tunelab.models import load_causal_lm
    from tunelab.training.fused_lora import fuse_lora_for_training
    from tunelab.training.lora import lora_model
    from tunelab.training.prefix_sharing import completion_loss_of

    base, tokenizer, train, val = load_common(args)
    base_loss = eval_loss(load_causal_lm(base.path), val, args.batch_size, tokenizer.pad_token_id)

    # PyTorch's counter has no formula for the CPU flash-attention kernel that SDPA picks here;
    # count it like the GPU kernels, halved because a causal kernel skips the masked half.
    def attention(q, k, v, *_, is_causal=False, out_shape=None, **__):
        return sdpa_flop_count(q, k, v) // (2 if is_causal else 1)

    def attention_backward(grad, q, k, v, _out, _lse, _dropout, is_causal, *_, **__):
        return sdpa_backward_flop_count(grad, q, k, v) // (2 if is_causal else 1)

    aten = torch.ops.aten
    counter = FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: attention,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward,
        },
    )
    config = tunelab_config(args)
    model = lora_model(base.path, config.adapter_size, config.lora_alpha)  # as train_sft builds
    assert fuse_lora_for_training(model), "train_sft trains the default model fused"
    model.train()
    batches = tunelab_batches(args, train, tokenizer.pad_token_id)
    with counter:
        for batch in batches:  # exactly the loop body of train_sft, minus the optimizer
            # row_multiple stays 1: the dead tokens train_sft adds in bf16 (to reuse oneDNN's
            # per-shape kernels) are not useful work, so they are not counted
            loss, _, _ = completion_loss_of(model, batch, share_prefix=True)
            loss.backward()
            model.zero_grad(set_to_none=True)
    by_op = counter.get_flop_counts()["Global"]
    return {
        "base_eval_loss": base_loss,
        "useful_flops": counter.get_total_flops(),
        "flops_by_op": {str(op): n for op, n in by_op.items()},
        "tokens": sum(b.tokens for b in batches),
        "padded_tokens": sum(b.input_ids.numel() for b in batches),
        "target_tokens": sum(int(b.loss_mask.sum()) for b in batches),
    }


def worker(args) -> None:
    before = matmul_gflops()
    if args.worker in ("tunelab", "tunelab-fp32"):
        result = run_tunelab(args)
    elif args.worker == "reference":
        result = run_reference(args)
    else:
        result = run_trl(args, args.worker)
    result["matmul_gflops"] = [before, matmul_gflops()]
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------- orchestration
def spawn(name: str, args, tmp: Path) -> dict:
    result, log = tmp / f"{name}.json", tmp / f"{name}.log"
    command = [sys.executable, __file__, "--worker", name, "--result", str(result)]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    command += ["--rank", str(args.rank), "--data", args.data, "--validation", args.validation]
    command += ["--bf16-steps", str(args.bf16_steps)]
    print(f"... {name}", flush=True)
    busy, children, start = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        sys.exit(f"{name} failed (exit {code}):\n{log.read_text()[-4000:]}")
    # CPU time that other processes took from this machine while the worker ran: the shared
    # machine's noise, shown next to each run rather than guessed at.
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - children)
    elapsed = time.perf_counter() - start
    return {**json.loads(result.read_text()), "others_busy": others / (elapsed * os.cpu_count())}


def busy_cpu_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8, choices=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--bf16-steps",
        type=int,
        default=None,
        help="steps of the trl-defaults run (default: all with native bf16, else 3)",
    )
    parser.add_argument("--data", default="examples/ticket-routing-chat/train.jsonl")
    parser.add_argument("--validation", default="examples/ticket-routing-chat/validation.jsonl")
    parser.add_argument("--worker", choices=[*RUNS, "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bf16_steps is None:
        args.bf16_steps = args.steps if native_bf16() else 3
    if args.worker:
        worker(args)
        return

    import peft
    import transformers
    import trl

    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}"
    )
    print(
        f"model {MODEL}, data {args.data} ({args.validation} for eval), "
        f"steps {args.steps}, batch {args.batch_size}, rank {args.rank}"
    )
    peaks, bf16_peaks = [matmul_gflops()], [matmul_gflops(dtype=torch.bfloat16)]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [*RUNS, "reference"]:
            if name == "tunelab-fp32" and results["tunelab"]["precision"] == "fp32":
                continue  # the default run already was fp32
            if name == "trl-bf16-no-ckpt" and args.bf16_steps < args.steps:
                continue  # emulated bf16 (~150 s a step): not TRL's fastest setting here
            results[name] = spawn(name, args, Path(tmp))
    peaks.append(matmul_gflops())
    bf16_peaks.append(matmul_gflops(dtype=torch.bfloat16))
    report(results, peaks, bf16_peaks)


def report(results: dict, parent_peaks: list[float], bf16_peaks: list[float]) -> None:
    ref, own = results["reference"], results["tunelab"]
    runs = [name for name in RUNS if name in results]
    trl_runs = [name for name in runs if name in TRL_RUNS]
    rate = {name: results[name]["tokens"] / results[name]["train_seconds"] for name in runs}

    print()
    header = (
        f"{'run':<18}{'steps':>6}{'tokens':>8}{'pad %':>7}{'train s':>9}{'tokens/s':>10}"
        f"{'TuneLab x':>11}{'eval loss':>11}{'wall s':>8}{'peak RSS':>10}{'others':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in runs:
        r = results[name]
        padded = r.get("padded_tokens", ref["padded_tokens"] if name in TUNELAB_RUNS else None)
        pad = f"{100 * (1 - r['tokens'] / padded):.0f}" if padded else "?"
        print(
            f"{name:<18}{r['steps']:>6}{r['tokens']:>8}{pad:>7}{r['train_seconds']:>9.1f}"
            f"{rate[name]:>10.1f}{rate['tunelab'] / rate[name]:>10.2f}x{r['eval_loss']:>11.4f}"
            f"{r['wall_seconds']:>8.1f}{r['peak_rss_mb']:>7.0f} MB{100 * r['others_busy']:>7.0f}%"
        )
    print(f"{'base model':<18}{'':>59}{ref['base_eval_loss']:>11.4f}")
    print(
        "others: share of the machine's cores that other processes used while the run's worker "
        "was alive (0% = the run had the machine to itself)"
    )
    print(
        f"tunelab: train_sft as `tune sft` runs it, --precision auto, which chose "
        f"{own['precision']} on this CPU"
        + ("; tunelab-fp32: the same with --precision fp32" if "tunelab-fp32" in results else "")
    )

    print()
    defaults = results["trl-defaults"]["defaults"]
    print("TRL defaults: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    for name in trl_runs:
        r = results[name]
        print(
            f"{name}: {r['tokens']} real tokens counted from its batches (TRL's own count "
            f"{r['trl_logged_tokens']}), TuneLab {own['tokens']}; Trainer train_runtime "
            f"{r['train_runtime']:.1f} s vs {r['train_seconds']:.1f} s inside steps"
        )

    # Every matmul measurement of the run; the best is the peak (conservative fraction).
    worker_peaks = {name: r["matmul_gflops"] for name, r in results.items()}
    peak = max([*parent_peaks, *(g for pair in worker_peaks.values() for g in pair)])
    flops_per_token = ref["useful_flops"] / ref["tokens"]
    print()
    print(
        f"Useful FLOPs: {ref['useful_flops'] / 1e12:.2f} TFLOP = TuneLab's step (LoRA forward + "
        f"backward, logits at the {ref['target_tokens']} target positions only, shared prompt "
        f"prefixes once; optimizer not counted) on its {own['steps']} batches, counted by torch FlopCounterMode; "
        f"{flops_per_token / 1e6:.0f} MFLOP per trained token. By op: "
        + ", ".join(f"{op} {n / 1e12:.3f}T" for op, n in ref["flops_by_op"].items())
    )
    if ref["tokens"] != own["tokens"]:
        print(
            f"  WARNING: rebuilt batches hold {ref['tokens']} tokens, train_sft reports {own['tokens']}"
        )
    print(
        f"fp32 matmul peak: {peak:.0f} GFLOP/s (best of all measurements; this process "
        f"start/end {parent_peaks[0]:.0f}/{parent_peaks[1]:.0f}; per worker before/after: "
        + ", ".join(f"{n} {a:.0f}/{b:.0f}" for n, (a, b) in worker_peaks.items())
        + ")"
    )
    bf16_peak = max(bf16_peaks)
    print(
        f"bf16 matmul peak: {bf16_peak:.0f} GFLOP/s (same shapes, this process start/end "
        f"{bf16_peaks[0]:.0f}/{bf16_peaks[1]:.0f}): {bf16_peak / peak:.2f}x fp32 on this CPU"
    )
    achieved = {name: flops_per_token * rate[name] / 1e9 for name in runs}
    for name in runs:
        bf16 = results[name].get("precision") == "bf16" or (name in TRL_RUNS and TRL_RUNS[name][0])
        print(
            f"{name:<18} {achieved[name]:7.1f} GFLOP/s useful = {100 * achieved[name] / peak:5.1f}% "
            "of the fp32 matmul peak"
            + (f" ({100 * achieved[name] / bf16_peak:.1f}% of the bf16 peak)" if bf16 else "")
        )

    print()
    full_bf16 = results["trl-defaults"]["steps"] == own["steps"]
    if full_bf16:
        defaults_run = "trl-defaults"
        print(
            "trl-defaults trained every step in bf16 (this CPU has native bf16): the targets below "
            f"are checked against TRL's true defaults. Against its defaults in fp32 (trl-fp32) "
            f"TuneLab is {rate['tunelab'] / rate['trl-fp32']:.2f}x."
        )
    else:
        defaults_run = "trl-fp32"
        print(
            f"trl-defaults trained {results['trl-defaults']['steps']} steps only (emulated bf16): "
            f"its rate is comparable, its eval loss is not; TuneLab is "
            f"{rate['tunelab'] / rate['trl-defaults']:.1f}x its tokens/s. The targets below are "
            "checked against trl-fp32, the stronger peer."
        )
    # TRL without checkpointing: its faster full run, fp32 or (where bf16 is native) bf16
    no_ckpt = max(
        (n for n in ("trl-no-ckpt", "trl-bf16-no-ckpt") if n in results),
        key=lambda n: rate[n],
    )
    checks = [
        (
            f"tokens/s >= 5x TRL defaults ({defaults_run})",
            rate["tunelab"] >= 5 * rate[defaults_run],
        ),
        (
            f"tokens/s >= 4x TRL without checkpointing ({no_ckpt}, the faster)",
            rate["tunelab"] >= 4 * rate[no_ckpt],
        ),
        (
            f"eval loss <= TRL defaults ({defaults_run})",
            own["eval_loss"] <= results[defaults_run]["eval_loss"],
        ),
        (
            f"eval loss <= TRL without checkpointing ({no_ckpt})",
            own["eval_loss"] <= results[no_ckpt]["eval_loss"],
        ),
        (
            f">= 50% of the fp32 matmul peak (tunelab, {own['precision']})",
            achieved["tunelab"] >= 0.5 * peak,
        ),
    ]
    if "tunelab-fp32" in results:
        checks.append(
            (
                ">= 50% of the fp32 matmul peak in fp32 (tunelab-fp32)",
                achieved["tunelab-fp32"] >= 0.5 * peak,
            )
        )
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()

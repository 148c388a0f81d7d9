"""Supervised tuning of a LoRA adapter: setup -> train -> save, readable top to bottom.

    tunelab tune sft --train examples/ticket-routing/train.jsonl \
        --validation examples/ticket-routing/validation.jsonl --name ticket-router

Why a loop of our own rather than ``transformers.Trainer``/TRL's ``SFTTrainer``: on a CPU the
training step is all that matters, and three things the generic trainers do by default waste
most of it (bench/bench_sft.py measures the difference):
- padding: batches are grouped by length (tunelab.data.batching), and right padding under a
  causal mask needs no attention mask at all;
- the output head: logits are computed only at positions whose next token is a model-turn
  target (tunelab.losses.lm), not over a 49k vocabulary at every prompt position;
- recomputation: no activation checkpointing; a small model's activations fit in memory.
A fourth waste is particular to tuning data: every example repeats the same instructions, and
the prompt prefix a batch shares is computed once (tunelab.training.prefix_sharing).
On Llama-style models the LoRA layers also train through a fused forward and hand-written
backward (tunelab.training.fused_lora): the same parameters and maths as PEFT's, in fewer and
larger matmuls with no full-size elementwise passes for the LoRA terms.

A run lives in one folder (``run_dir``) named by a system-made id; killing it at any moment and
running the same command again resumes from the last checkpoint and ends with the same adapter
as an uninterrupted run (the batch order, the learning-rate schedule and the optimizer state are
all functions of the step, restored from the checkpoint).
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab import __version__
from tunelab.bundle import MANIFEST, file_hashes
from tunelab.configs.sft import SFTConfig
from tunelab.data.batching import Batch, collate, epoch_batches
from tunelab.data.template import Encoded
from tunelab.data.validation import ValidationReport, load_supervised
from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
from tunelab.training.atomic import atomic_dir, recover_dir, write_json
from tunelab.training.checkpoint import LoopState, load_latest, save_checkpoint, trainable_state
from tunelab.training.early_stopping import record_eval
from tunelab.training.eval_loss import evaluate
from tunelab.training.fused_lora import fuse_lora_for_training
from tunelab.training.init_adapter import init_adapter_from
from tunelab.training.metrics import MetricsLog, plot_loss_curve
from tunelab.training.precision import matmul_row_multiple, resolve_precision
from tunelab.training.prefix_sharing import can_share_prefix, completion_loss_of
from tunelab.training.progress import Progress, ProgressCallback, no_progress

logger = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Every linear layer of a Llama-style decoder block (QLoRA's finding: all layers beat q/v only)."""


class TrainingInterrupted(RuntimeError):
    """The run was asked to stop; a checkpoint was written and the same command resumes it."""


@dataclass
class SFTResult:
    adapter_dir: Path
    steps: int
    best_step: int | None
    best_eval_loss: float | None
    final_train_loss: float | None
    stopped_early: bool
    resumed_from_step: int
    usage: dict[str, Any] = field(default_factory=dict)


def train_sft(
    config: SFTConfig,
    train_file: Path,
    run_dir: Path,
    validation_file: Path | None = None,
    init_adapter_dir: Path | None = None,
    *,
    on_progress: ProgressCallback = no_progress,
    should_stop: Callable[[], bool] = lambda: False,
) -> SFTResult:
    # ---------------------------------------------------------------- setup
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)
    on_progress(Progress("loading", message=f"resolving base model {config.base_model}"))
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)

    on_progress(Progress("validating", message=f"reading {train_file}"))
    train, train_report = load_supervised(
        train_file, tokenizer, max_seq_length=config.max_seq_length
    )
    val: list[Encoded] = []
    val_report: ValidationReport | None = None
    if validation_file is not None:
        val, val_report = load_supervised(
            validation_file, tokenizer, max_seq_length=config.max_seq_length
        )

    model = _lora_model(base.path, config)
    if init_adapter_dir is not None:  # continued tuning: step 0 is the parent adapter
        init_adapter_from(model, init_adapter_dir)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adamw(params, config.learning_rate)

    total_steps = config.total_steps(len(train))
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    warmup = max(1, int(config.warmup_ratio * total_steps)) if config.warmup_ratio else 0
    pad_id = tokenizer.pad_token_id
    lengths = [len(e.input_ids) for e in train]

    ckpt_dir, metrics = run_dir / "checkpoints", MetricsLog(run_dir / "metrics.jsonl")
    recover_dir(run_dir / "best")
    state = load_latest(ckpt_dir, model, optimizer) or LoopState()
    resumed_from = state.step
    metrics.truncate_after(state.step)
    if state.step and not (run_dir / "best").exists():
        state.best_eval_loss, state.best_step = None, None  # best adapter lost with its folder
    if "precision" not in state.extra:  # chosen once per run: a resumed run computes the same
        state.extra["precision"] = resolve_precision(config.precision, model.config.hidden_size)
    bf16 = state.extra["precision"] == "bf16"
    fused = fuse_lora_for_training(model, torch.bfloat16 if bf16 else torch.float32)
    # Models the fused path does not cover train through PEFT's forward, in bf16 by autocast.
    autocast_bf16 = bf16 and not fused
    share_prefix = can_share_prefix(model)  # the examples' common prompt prefix, computed once
    device_type = params[0].device.type
    row_multiple = matmul_row_multiple(state.extra["precision"], device_type)

    def learning_rate(step: int) -> float:
        """Linear warm-up, then linear decay to zero: a pure function of the step, so resuming
        needs no scheduler state."""
        if step < warmup:
            return config.learning_rate * (step + 1) / warmup
        remaining = max(1, total_steps - warmup)
        return config.learning_rate * max(0.0, (total_steps - step) / remaining)

    def batch_at(step: int) -> Batch:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            order_cache[epoch] = epoch_batches(lengths, config.batch_size, config.seed, epoch)
        return collate([train[i] for i in order_cache[epoch][index]], pad_id)

    order_cache: dict[int, list[list[int]]] = {}

    # ---------------------------------------------------------------- train
    model.train()
    last_loss: float | None = None
    timer_start, timer_step = time.perf_counter(), state.step
    while state.step < total_steps and not state.stopped_early:
        if should_stop():
            save_checkpoint(ckpt_dir, model, optimizer, state)
            raise TrainingInterrupted(f"stopped at step {state.step}; the same command resumes it")
        step_start = time.perf_counter()
        batch = batch_at(state.step)
        lr = learning_rate(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr

        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast_bf16):
            loss, correct, n_targets = completion_loss_of(model, batch, share_prefix, row_multiple)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - step_start
        state.step += 1
        state.tokens_seen += batch.tokens
        state.train_seconds += elapsed
        last_loss = loss.item()
        metrics.append(
            {
                "step": state.step,
                "epoch": state.step / steps_per_epoch,
                "train_loss": last_loss,
                "train_accuracy": correct.item() / max(1, n_targets),
                "learning_rate": lr,
                "grad_norm": float(grad_norm),
                "tokens": batch.tokens,
                "tokens_per_second": batch.tokens / elapsed,
            }
        )

        if val and (state.step % config.eval_every_steps == 0 or state.step == total_steps):
            on_progress(Progress("evaluating", state.step, total_steps, train_loss=last_loss))
            _evaluate_and_track(model, decoder, head, val, config, pad_id, state, metrics, run_dir)
            model.train()
        if state.step % config.checkpoint_every_steps == 0 and state.step < total_steps:
            save_checkpoint(ckpt_dir, model, optimizer, state)

        rate = (time.perf_counter() - timer_start) / max(1, state.step - timer_step)
        on_progress(
            Progress(
                "training",
                state.step,
                total_steps,
                train_loss=last_loss,
                eval_loss=state.best_eval_loss,
                tokens_per_second=batch.tokens / elapsed,
                eta_seconds=rate * (total_steps - state.step),
            )
        )

    # ---------------------------------------------------------------- save
    on_progress(Progress("saving", state.step, total_steps, message="writing the adapter bundle"))
    if val and state.best_step is not None and (run_dir / "best").exists():
        from safetensors.torch import load_file

        best = load_file(run_dir / "best" / "trainable.safetensors")
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in best.items():
                named[name].copy_(tensor)
    usage = {
        "trained_tokens": state.tokens_seen,
        # Vertex bills the dataset's tokens times the epochs asked for (whole or fractional).
        "billable_tokens": round(train_report.total_tokens * total_steps / steps_per_epoch),
        "train_seconds": round(state.train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "precision": state.extra["precision"],
    }
    adapter_dir = run_dir / "adapter"
    _write_bundle(
        adapter_dir, model, tokenizer, config, base, train_report, val_report, metrics, state, usage
    )
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the bundle is complete; nothing left to resume
    on_progress(Progress("done", state.step, total_steps, train_loss=last_loss))
    return SFTResult(
        adapter_dir=adapter_dir,
        steps=state.step,
        best_step=state.best_step,
        best_eval_loss=state.best_eval_loss,
        final_train_loss=last_loss,
        stopped_early=state.stopped_early,
        resumed_from_step=resumed_from,
        usage=usage,
    )


def _lora_model(base_path: Path, config: SFTConfig):
    from peft import LoraConfig, get_peft_model

    model = load_causal_lm(base_path)
    lora = LoraConfig(
        r=config.adapter_size,
        lora_alpha=config.lora_alpha,
        # No dropout: it would cost a mask per layer per step and make runs depend on RNG
        # state; on 100-1000 examples for a few epochs the adapter's low rank is regulariser
        # enough, and early stopping on the validation set guards the rest.
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _adamw(params: list[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
    """AdamW without weight decay; the fused kernel (one pass over all parameters instead of a
    dozen small ops per tensor) wherever torch has one for the parameters' device."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused)


def _evaluate_and_track(model, decoder, head, val, config, pad_id, state, metrics, run_dir) -> None:
    result = evaluate(model, decoder, head, val, config.batch_size, pad_id)
    metrics.append({"step": state.step, **result})
    if record_eval(state, result["eval_loss"], config.early_stopping_patience):
        from safetensors.torch import save_file

        with atomic_dir(run_dir / "best") as tmp:  # the adapter the bundle will hold
            save_file(trainable_state(model), tmp / "trainable.safetensors")
    elif state.stopped_early:
        logger.info(
            "early stopping at step %d: no better eval loss for %d evaluations (best %.4f at step %d)",
            state.step,
            config.early_stopping_patience,
            state.best_eval_loss,
            state.best_step,
        )


def _write_bundle(
    adapter_dir, model, tokenizer, config, base, train_report, val_report, metrics, state, usage
) -> None:
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / "tuning_config.json", {**config.model_dump(), "base_model_path": str(base.path)}
        )
        write_json(
            tmp / "data_stats.json",
            {
                "train": train_report.to_dict(),
                "validation": val_report.to_dict() if val_report else None,
            },
        )
        shutil.copyfile(metrics.path, tmp / "metrics.jsonl")
        plot_loss_curve(metrics.rows(), tmp / "loss_curve.png", title=f"SFT on {base.ref}")
        write_json(
            tmp / MANIFEST,
            {
                "kind": "lora_adapter",
                "method": config.method,
                "base_model": base.ref,
                "tunelab_version": __version__,
                "train_dataset_sha256": train_report.sha256,
                "validation_dataset_sha256": val_report.sha256 if val_report else None,
                "steps": state.step,
                "best_step": state.best_step,
                "best_eval_loss": state.best_eval_loss,
                "stopped_early": state.stopped_early,
                "usage": usage,
                "files": file_hashes(tmp),
            },
        )

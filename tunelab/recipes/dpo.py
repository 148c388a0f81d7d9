"""Direct preference optimisation of a LoRA adapter: setup -> train -> save, top to bottom.

    tunelab tune dpo --preference examples/preference/preference.jsonl \
        --validation examples/preference/heldout_pairs.jsonl --name concise-dpo

DPO (Rafailov et al. 2023; :mod:`tunelab.losses.dpo`) tunes the policy on preference pairs
directly, with no reward model and no sampling: each step is one forward/backward over the
chosen and rejected answers of a batch of pairs.

**The reference is the policy at step 0**: the base model, or, with ``init_adapter``, the
supervised adapter the run starts from (the usual recipe: SFT, then DPO against the SFT model,
so the KL constraint keeps what supervised tuning taught). Since the reference never changes,
its log-probabilities for every pair are computed once, before the first step, and kept in
``reference_logps.safetensors`` in the run folder: no second copy of the weights, and no
reference forward pass per step (TRL's ``precompute_ref_log_probs``, which its DPOTrainer does
not do by default).

Evaluation on validation pairs reports the DPO loss, reward accuracy and the implicit reward
margin, and the plain log-probability margin ``log pi(y_w|x) - log pi(y_l|x)`` of the tuned
model next to the reference's: the number that says whether preferred answers became more
likely than rejected ones. The bundle holds the adapter after the last step.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from tunelab import __version__
from tunelab.bundle import (
    MANIFEST,
    file_hashes,
    read_tuning_config,
    verify_adapter_bundle,
)
from tunelab.configs.dpo import DPOConfig
from tunelab.data.batching import epoch_batches
from tunelab.data.preference import EncodedPair, collate_pairs, load_preference, pair_lengths
from tunelab.losses.dpo import dpo_loss
from tunelab.losses.rl import sequence_logprobs
from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
from tunelab.recipes.reward_model import lora_model
from tunelab.recipes.sft import TrainingInterrupted
from tunelab.training.atomic import atomic_dir, write_bytes, write_json
from tunelab.training.checkpoint import LoopState, load_latest, save_checkpoint
from tunelab.training.metrics import MetricsLog, plot_loss_curve
from tunelab.training.progress import Progress, ProgressCallback, no_progress

logger = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.safetensors"


@dataclass
class DPOResult:
    adapter_dir: Path
    steps: int
    final_train_loss: float | None
    evaluation: dict[str, float]
    """Last evaluation on the validation pairs (empty without them)."""
    resumed_from_step: int
    usage: dict[str, Any] = field(default_factory=dict)


def train_dpo(
    config: DPOConfig,
    preference_file: Path,
    run_dir: Path,
    validation_file: Path | None = None,
    init_adapter_dir: Path | None = None,
    *,
    on_progress: ProgressCallback = no_progress,
    should_stop: Callable[[], bool] = lambda: False,
) -> DPOResult:
    # ---------------------------------------------------------------- setup
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)
    on_progress(Progress("loading", message=f"resolving base model {config.base_model}"))
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    lengths_kw = dict(
        prompt_sequence_length=config.prompt_sequence_length,
        target_sequence_length=config.target_sequence_length,
    )
    on_progress(Progress("validating", message=f"reading {preference_file}"))
    train, report = load_preference(preference_file, tokenizer, **lengths_kw)
    val: list[EncodedPair] = []
    val_report = None
    if validation_file is not None:
        val, val_report = load_preference(validation_file, tokenizer, **lengths_kw)

    if init_adapter_dir is not None:
        model = _from_adapter(init_adapter_dir, base.path)
    else:
        model = lora_model(base.path, config.adapter_size, config.lora_alpha)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    pad_id = tokenizer.pad_token_id

    total_steps = config.total_steps(len(train))
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    warmup = max(1, int(config.warmup_ratio * total_steps)) if config.warmup_ratio else 0
    lengths = pair_lengths(train)
    order: dict[int, list[list[int]]] = {}

    def batch_at(step: int) -> list[int]:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in order:
            order.clear()
            order[epoch] = epoch_batches(lengths, config.batch_size, config.seed, epoch)
        return order[epoch][index]

    # The reference: this model before any step. Its log-probs are computed once, for the pairs
    # the run will train on (the batch order is known in advance) and the validation pairs,
    # and kept in the run folder so a resumed run reads them back.
    reference_path = run_dir / REFERENCE_FILE
    reference = _load_reference(reference_path, len(train), len(val))
    reference_start = time.perf_counter()
    if reference is None:
        on_progress(Progress("preparing", message="reference log-probabilities"))
        needed = sorted({i for step in range(total_steps) for i in batch_at(step)})
        reference = {
            "train": torch.full((len(train), 2), float("nan")),  # NaN: never trained on
            "validation": answer_logprobs(model, val, pad_id),
        }
        reference["train"][needed] = answer_logprobs(model, [train[i] for i in needed], pad_id)
        write_bytes(reference_path, save({k: v.contiguous() for k, v in reference.items()}))
    reference_seconds = time.perf_counter() - reference_start

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)

    ckpt_dir, metrics = run_dir / "checkpoints", MetricsLog(run_dir / "metrics.jsonl")
    state = load_latest(ckpt_dir, model, optimizer) or LoopState()
    resumed_from = state.step
    metrics.truncate_after(state.step)

    def learning_rate(step: int) -> float:
        """Linear warm-up, then linear decay to zero (a function of the step: resumable)."""
        if step < warmup:
            return config.learning_rate * (step + 1) / warmup
        return config.learning_rate * max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    # ---------------------------------------------------------------- train
    model.train()
    last_loss: float | None = None
    evaluation: dict[str, float] = {}
    timer_start, timer_step = time.perf_counter(), state.step
    while state.step < total_steps:
        if should_stop():
            save_checkpoint(ckpt_dir, model, optimizer, state)
            raise TrainingInterrupted(f"stopped at step {state.step}; the same command resumes it")
        step_start = time.perf_counter()
        indices = batch_at(state.step)
        batch = collate_pairs([train[i] for i in indices], pad_id)  # (2B, T): chosen, rejected
        lr = learning_rate(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr

        hidden = decoder(input_ids=batch.input_ids).last_hidden_state  # (2B, T, C)
        logps = sequence_logprobs(hidden, head, batch.input_ids, batch.response_mask)  # (2B,)
        policy_chosen, policy_rejected = logps.chunk(2)
        ref = reference["train"][indices]  # (B, 2): chosen, rejected
        terms = dpo_loss(policy_chosen, policy_rejected, ref[:, 0], ref[:, 1], config.beta)
        terms.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - step_start
        state.step += 1
        state.tokens_seen += batch.tokens
        state.train_seconds += elapsed
        last_loss = terms.loss.item()
        metrics.append(
            {
                "step": state.step,
                "epoch": state.step / steps_per_epoch,
                "train_loss": last_loss,
                "reward_accuracy": terms.accuracy,
                "reward_margin": terms.margins.mean().item(),
                "chosen_reward": terms.chosen_rewards.mean().item(),
                "rejected_reward": terms.rejected_rewards.mean().item(),
                "learning_rate": lr,
                "grad_norm": float(grad_norm),
                "tokens": batch.tokens,
                "tokens_per_second": batch.tokens / elapsed,
            }
        )
        if val and (state.step % config.eval_every_steps == 0 or state.step == total_steps):
            on_progress(Progress("evaluating", state.step, total_steps, train_loss=last_loss))
            evaluation = evaluate_dpo(model, val, reference["validation"], config.beta, pad_id)
            metrics.append({"step": state.step, **evaluation})
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
                eval_loss=evaluation.get("eval_loss"),
                tokens_per_second=batch.tokens / elapsed,
                eta_seconds=rate * (total_steps - state.step),
            )
        )
    if val and not evaluation:  # resumed after the last step's evaluation was logged
        evaluation = evaluate_dpo(model, val, reference["validation"], config.beta, pad_id)

    # ---------------------------------------------------------------- save
    on_progress(Progress("saving", state.step, total_steps, message="writing the adapter bundle"))
    usage = {
        "trained_tokens": state.tokens_seen,
        "billable_tokens": round(report.total_tokens * total_steps / steps_per_epoch),
        "train_seconds": round(state.train_seconds, 3),
        "reference_seconds": round(reference_seconds, 3),  # this process's share (0 on resume)
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    adapter_dir = run_dir / "adapter"
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / "tuning_config.json", {**config.model_dump(), "base_model_path": str(base.path)}
        )
        write_json(
            tmp / "data_stats.json",
            {
                "preference": report.to_dict(),
                "validation": val_report.to_dict() if val_report else None,
            },
        )
        shutil.copyfile(metrics.path, tmp / "metrics.jsonl")
        plot_loss_curve(metrics.rows(), tmp / "loss_curve.png", title=f"DPO on {base.ref}")
        write_json(
            tmp / MANIFEST,
            {
                "kind": "lora_adapter",
                "method": config.method,
                "base_model": base.ref,
                "tunelab_version": __version__,
                "preference_dataset_sha256": report.sha256,
                "validation_dataset_sha256": val_report.sha256 if val_report else None,
                "init_adapter": str(init_adapter_dir) if init_adapter_dir else None,
                "steps": state.step,
                "evaluation": evaluation,
                "usage": usage,
                "files": file_hashes(tmp),
            },
        )
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    on_progress(Progress("done", state.step, total_steps, train_loss=last_loss))
    return DPOResult(adapter_dir, state.step, last_loss, evaluation, resumed_from, usage)


@torch.no_grad()
def answer_logprobs(
    model, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int = 8
) -> torch.Tensor:
    """(n, 2) summed log-probabilities of each pair's chosen and rejected answer."""
    out = torch.zeros(len(pairs), 2)
    if not pairs:
        return out
    model.eval()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    order = np.argsort(pair_lengths(pairs), kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate_pairs([pairs[i] for i in idx], pad_id)
        hidden = decoder(input_ids=batch.input_ids).last_hidden_state
        logps = sequence_logprobs(hidden, head, batch.input_ids, batch.response_mask)
        chosen, rejected = logps.chunk(2)
        out[torch.as_tensor(idx)] = torch.stack([chosen, rejected], dim=1)
    return out


def evaluate_dpo(
    model, pairs: Sequence[EncodedPair], reference: torch.Tensor, beta: float, pad_id: int
) -> dict[str, float]:
    """DPO loss, reward accuracy and margins on held-out pairs; the log-prob margin
    log pi(y_w) - log pi(y_l) of the policy next to the reference's."""
    policy = answer_logprobs(model, pairs, pad_id)  # (n, 2)
    terms = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta)
    return {
        "eval_loss": terms.loss.item(),
        "eval_reward_accuracy": terms.accuracy,
        "eval_reward_margin": terms.margins.mean().item(),
        "eval_logp_margin": (policy[:, 0] - policy[:, 1]).mean().item(),
        "eval_reference_logp_margin": (reference[:, 0] - reference[:, 1]).mean().item(),
    }


def _from_adapter(adapter_dir: Path, base_path: Path):
    """The base model with a tuned adapter loaded as the trainable starting point."""
    from peft import PeftModel

    verify_adapter_bundle(adapter_dir)  # safetensors only, every file as its manifest lists
    adapter_base = read_tuning_config(adapter_dir)["base_model"]
    if resolve_model(adapter_base).path != base_path:
        raise ValueError(
            f"init_adapter was tuned on {adapter_base!r}, not on this run's base model "
            f"({base_path}); give --base {adapter_base}"
        )
    return PeftModel.from_pretrained(load_causal_lm(base_path), adapter_dir, is_trainable=True)


def _load_reference(path: Path, n_train: int, n_val: int) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        saved = load_file(path)
    except Exception as exc:  # a damaged file is recomputed, never trusted
        logger.warning("reference log-probs unreadable (%s); recomputing", exc)
        return None
    if saved["train"].shape != (n_train, 2) or saved["validation"].shape != (n_val, 2):
        return None
    return saved

"""Stage 1 of RLHF, the reward model: setup -> train -> save, readable top to bottom.

A reward model here is the base model with a LoRA adapter and a linear scalar head: the score of
an answer is ``w . h_last``, where ``h_last`` is the final hidden state at the answer's last token
(its end-of-turn token; see :func:`tunelab.data.preference.ended`). It is trained on
human-preference pairs with the pairwise Bradley-Terry loss (:mod:`tunelab.losses.reward`) and
reports its pairwise accuracy on held-out pairs: the evaluation file when one is given, else a
seeded ``eval_fraction`` of the pairs, held out before training.

The bundle is an adapter bundle like supervised tuning's (``adapter_model.safetensors`` and
friends) plus ``reward_head.safetensors``; the RL stage loads the adapter as a second named
adapter on the policy's own base model (no second copy of the weights) and the head beside it.

Why our own loop rather than TRL's ``RewardTrainer`` (bench/bench_rlhf.py measures both): the
same reasons as supervised tuning (length-grouped batches, no attention mask under right
padding, no activation checkpointing), one forward pass for the chosen and rejected answers of a
batch, and checkpoints in safetensors, where TRL pickles the optimizer state.
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
from safetensors.torch import load_file, save_file

from tunelab import __version__
from tunelab.bundle import MANIFEST, file_hashes
from tunelab.configs.rlhf import RewardModelConfig
from tunelab.data.batching import epoch_batches
from tunelab.data.preference import EncodedPair, collate_pairs, load_preference, pair_lengths
from tunelab.losses.reward import pairwise_accuracy, pairwise_loss
from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
from tunelab.recipes.sft import LORA_TARGETS, TrainingInterrupted
from tunelab.training.atomic import atomic_dir, write_json
from tunelab.training.checkpoint import LoopState, load_latest, save_checkpoint
from tunelab.training.metrics import MetricsLog, plot_loss_curve
from tunelab.training.progress import Progress, ProgressCallback, no_progress

logger = logging.getLogger(__name__)

HEAD_FILE = "reward_head.safetensors"
"""The scalar head's weight, (1, hidden_size), beside the LoRA adapter in the bundle."""


@dataclass
class RewardModelResult:
    bundle_dir: Path
    steps: int
    pairwise_accuracy: float | None
    """On the held-out pairs; None when there were none."""
    eval_pairs: int
    final_train_loss: float | None
    resumed_from_step: int
    usage: dict[str, Any] = field(default_factory=dict)


def train_reward_model(
    config: RewardModelConfig,
    preference_file: Path,
    run_dir: Path,
    eval_file: Path | None = None,
    *,
    on_progress: ProgressCallback = no_progress,
    should_stop: Callable[[], bool] = lambda: False,
) -> RewardModelResult:
    # ---------------------------------------------------------------- setup
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)
    on_progress(Progress("loading", message=f"resolving base model {config.base_model}"))
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    lengths_kw = dict(
        prompt_sequence_length=config.prompt_sequence_length,
        target_sequence_length=config.target_sequence_length,
        instruction=config.instruction,
    )
    on_progress(Progress("validating", message=f"reading {preference_file}"))
    pairs, report = load_preference(preference_file, tokenizer, **lengths_kw)
    eval_report = None
    if eval_file is not None:
        train, (held_out, eval_report) = pairs, load_preference(eval_file, tokenizer, **lengths_kw)
    else:
        train, held_out = split_pairs(pairs, config.eval_fraction, config.seed)

    model = lora_model(base.path, config.adapter_size, config.lora_alpha)
    head = torch.nn.Linear(model.config.hidden_size, 1, bias=False)  # BT loss ignores a bias
    torch.nn.init.zeros_(head.weight)  # every answer starts at reward 0
    trained = torch.nn.ModuleDict({"lm": model, "head": head})  # what checkpoints hold
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)

    total_steps = config.train_steps
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    warmup = max(1, int(config.warmup_ratio * total_steps)) if config.warmup_ratio else 0
    pad_id, end_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    lengths = pair_lengths(train)

    ckpt_dir, metrics = run_dir / "checkpoints", MetricsLog(run_dir / "metrics.jsonl")
    state = load_latest(ckpt_dir, trained, optimizer) or LoopState()
    resumed_from = state.step
    metrics.truncate_after(state.step)

    def learning_rate(step: int) -> float:
        """Linear warm-up, then linear decay to zero (a function of the step: resumable)."""
        if step < warmup:
            return config.learning_rate * (step + 1) / warmup
        return config.learning_rate * max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    order: dict[int, list[list[int]]] = {}

    def batch_at(step: int) -> list[EncodedPair]:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in order:
            order.clear()
            order[epoch] = epoch_batches(lengths, config.batch_size, config.seed, epoch)
        return [train[i] for i in order[epoch][index]]

    # ---------------------------------------------------------------- train
    model.train()
    last_loss: float | None = None
    timer_start, timer_step = time.perf_counter(), state.step
    while state.step < total_steps:
        if should_stop():
            save_checkpoint(ckpt_dir, trained, optimizer, state)
            raise TrainingInterrupted(f"stopped at step {state.step}; the same command resumes it")
        step_start = time.perf_counter()
        batch = collate_pairs(batch_at(state.step), pad_id, end_id)  # (2B, T): chosen, rejected
        lr = learning_rate(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr

        rewards = score(model, head, batch.input_ids, batch.lengths)  # (2B,)
        chosen, rejected = rewards.chunk(2)  # (B,), (B,)
        loss = pairwise_loss(chosen, rejected)
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
                "train_accuracy": pairwise_accuracy(chosen, rejected),
                "reward_margin": (chosen - rejected).mean().item(),
                "learning_rate": lr,
                "grad_norm": float(grad_norm),
                "tokens": batch.tokens,
                "tokens_per_second": batch.tokens / elapsed,
            }
        )
        if held_out and state.step % config.eval_every_steps == 0 and state.step < total_steps:
            metrics.append(
                {"step": state.step, **evaluate_pairs(model, head, held_out, pad_id, end_id)}
            )
            model.train()
        if state.step % config.checkpoint_every_steps == 0 and state.step < total_steps:
            save_checkpoint(ckpt_dir, trained, optimizer, state)
        rate = (time.perf_counter() - timer_start) / max(1, state.step - timer_step)
        on_progress(
            Progress(
                "training",
                state.step,
                total_steps,
                train_loss=last_loss,
                tokens_per_second=batch.tokens / elapsed,
                eta_seconds=rate * (total_steps - state.step),
            )
        )

    # ---------------------------------------------------------------- save
    final = evaluate_pairs(model, head, held_out, pad_id, end_id) if held_out else {}
    if final:
        metrics.append({"step": state.step, **final})
    on_progress(Progress("saving", state.step, total_steps, message="writing the reward model"))
    usage = {
        "trained_tokens": state.tokens_seen,
        "train_seconds": round(state.train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    bundle_dir = run_dir / "reward_model"
    with atomic_dir(bundle_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_file({"weight": head.weight.detach().contiguous()}, tmp / HEAD_FILE)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / "tuning_config.json", {**config.model_dump(), "base_model_path": str(base.path)}
        )
        write_json(
            tmp / "data_stats.json",
            {
                "preference": report.to_dict(),
                "eval": eval_report.to_dict() if eval_report else None,
                "train_pairs": len(train),
                "eval_pairs": len(held_out),
            },
        )
        shutil.copyfile(metrics.path, tmp / "metrics.jsonl")
        plot_loss_curve(metrics.rows(), tmp / "loss_curve.png", title=f"Reward model on {base.ref}")
        write_json(
            tmp / MANIFEST,
            {
                "kind": "reward_model",
                "method": config.method,
                "base_model": base.ref,
                "tunelab_version": __version__,
                "preference_dataset_sha256": report.sha256,
                "eval_dataset_sha256": eval_report.sha256 if eval_report else None,
                "steps": state.step,
                "eval_pairs": len(held_out),
                "pairwise_accuracy": final.get("eval_accuracy"),
                "eval_reward_margin": final.get("eval_reward_margin"),
                "usage": usage,
                "files": file_hashes(tmp),
            },
        )
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    on_progress(Progress("done", state.step, total_steps, train_loss=last_loss))
    return RewardModelResult(
        bundle_dir=bundle_dir,
        steps=state.step,
        pairwise_accuracy=final.get("eval_accuracy"),
        eval_pairs=len(held_out),
        final_train_loss=last_loss,
        resumed_from_step=resumed_from,
        usage=usage,
    )


# -------------------------------------------------------------------- pieces the RL stage reuses


def lora_model(base_path: Path, rank: int, alpha: int):
    """The base model with a fresh LoRA adapter (named ``default``) on every linear layer."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(load_causal_lm(base_path), lora)


def score(
    model, head: torch.nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """(B,) rewards: the head on the final hidden state at each sequence's last real token.

    input_ids: (B, T) right-padded (no attention mask needed under a causal mask); lengths: (B,).
    Runs with whichever adapter is active on ``model``.
    """
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state  # (B, T, C)
    last = hidden[torch.arange(len(input_ids)), lengths - 1]  # (B, C)
    return head(last).squeeze(-1).float()  # (B,)


def load_head(bundle_dir: Path) -> torch.nn.Linear:
    weight = load_file(bundle_dir / HEAD_FILE)["weight"]  # (1, C)
    head = torch.nn.Linear(weight.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    head.requires_grad_(False)
    return head


@torch.no_grad()
def evaluate_pairs(
    model,
    head: torch.nn.Module,
    pairs: Sequence[EncodedPair],
    pad_id: int,
    end_id: int | None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Held-out pairwise loss, accuracy and mean reward margin (chosen - rejected)."""
    model.eval()
    chosen_all, rejected_all = [], []
    order = np.argsort(pair_lengths(pairs), kind="stable")
    for start in range(0, len(order), batch_size):
        batch = collate_pairs([pairs[i] for i in order[start : start + batch_size]], pad_id, end_id)
        chosen, rejected = score(model, head, batch.input_ids, batch.lengths).chunk(2)
        chosen_all.append(chosen)
        rejected_all.append(rejected)
    chosen, rejected = torch.cat(chosen_all), torch.cat(rejected_all)
    return {
        "eval_loss": pairwise_loss(chosen, rejected).item(),
        "eval_accuracy": pairwise_accuracy(chosen, rejected),
        "eval_reward_margin": (chosen - rejected).mean().item(),
    }


def split_pairs(
    pairs: list[EncodedPair], fraction: float, seed: int
) -> tuple[list[EncodedPair], list[EncodedPair]]:
    """(train, held out): a seeded ``fraction`` of the pairs held out, at least one when there
    are 10 or more pairs; none below that, or with fraction 0."""
    if fraction <= 0 or len(pairs) < 10:
        return pairs, []
    n_eval = max(1, round(fraction * len(pairs)))
    held = set(np.random.default_rng([seed, 7]).permutation(len(pairs))[:n_eval].tolist())
    train = [p for i, p in enumerate(pairs) if i not in held]
    return train, [p for i, p in enumerate(pairs) if i in held]

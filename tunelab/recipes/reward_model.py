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
padding, no activation checkpointing, the fused LoRA forward in bf16 where the CPU is fast at it,
the prompt prefix the batch shares computed once), one forward pass for the chosen and rejected
answers of a batch whose last layer computes only the answers' last tokens (the only states the
head reads), and checkpoints in safetensors, where TRL pickles the optimizer state.
The head and its bundle file are tunelab.models.reward_head's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Unpack

import numpy as np
import torch

from tunelab.configs.rlhf import RewardModelConfig
from tunelab.data.preference import EncodedPair, collate_pairs, load_preference, pair_lengths
from tunelab.losses.reward import pairwise_accuracy, pairwise_loss
from tunelab.models.device import to_device
from tunelab.models.reward_head import new_head, save_head, score
from tunelab.training.lora import lora_model
from tunelab.training.metrics import plot_loss_curve
from tunelab.training.run import BatchOrder, RunHooks, RunResult, TrainingRun


@dataclass(kw_only=True)
class RewardModelResult(RunResult):
    pairwise_accuracy: float | None
    """On the held-out pairs; None when there were none."""
    eval_pairs: int

    @property
    def bundle_dir(self) -> Path:
        """The reward model's bundle: its adapter and head, for the RL stage to load."""
        return self.adapter_dir


def train_reward_model(
    config: RewardModelConfig,
    preference_file: Path,
    run_dir: Path,
    eval_file: Path | None = None,
    **hooks: Unpack[RunHooks],
) -> RewardModelResult:
    """Train a reward model (adapter and head) on the pairs of ``preference_file`` into
    ``run_dir/reward_model``, scored on ``eval_file``'s pairs or a held-out share of them."""
    # ---------------------------------------------------------------- data
    run = TrainingRun(run_dir, config, **hooks)
    base, tokenizer = run.load_base_model()
    lengths_kw = dict(
        prompt_sequence_length=config.prompt_sequence_length,
        target_sequence_length=config.target_sequence_length,
        instruction=config.instruction,
    )
    run.report("validating", f"reading {preference_file}")
    pairs, report = load_preference(preference_file, tokenizer, **lengths_kw)
    eval_report = None
    if eval_file is not None:
        train, (held_out, eval_report) = pairs, load_preference(eval_file, tokenizer, **lengths_kw)
    else:
        train, held_out = split_pairs(pairs, config.eval_fraction, config.seed)
    pad_id, end_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    # ---------------------------------------------------------------- model
    model = run.place(lora_model(base.path, config.adapter_size, config.lora_alpha))
    head = new_head(model.config.hidden_size)  # every answer starts at reward 0
    trained = torch.nn.ModuleDict({"lm": model, "head": head})  # checkpointed; start() places it
    order = BatchOrder(pair_lengths(train), config.batch_size, config.seed)
    run.start(
        trained,
        learning_rate=config.learning_rate,
        total_steps=config.train_steps,
        order=order,
        eval_every=config.eval_every_steps if held_out else None,
    )
    fast = run.fast_path(model)

    # ---------------------------------------------------------------- train
    trained.train()
    for step in run.steps():
        indices = run.local_batch(step)  # this rank's share of the step's pairs
        batch = run.batch(collate_pairs([train[i] for i in indices], pad_id, end_id))  # (2B, T)
        # the final hidden state at each answer's last token: (2B, C), nothing else is read
        last = fast.hidden_at(batch.input_ids, batch.response_mask, batch.lengths - 1)
        chosen, rejected = head(last).squeeze(-1).chunk(2)  # (B,), (B,)
        loss = pairwise_loss(chosen, rejected)
        run.backward_and_step(
            loss,
            tokens=batch.tokens,
            weight=len(indices),  # the loss is a mean over pairs
            train_accuracy=pairwise_accuracy(chosen, rejected),
            reward_margin=(chosen - rejected).mean().item(),
        )
        if run.evaluation_due():
            run.evaluate(lambda: evaluate_pairs(model, head, held_out, pad_id, end_id))

    # ---------------------------------------------------------------- save
    final = run.last_eval

    bundle_dir = run.write_bundle(
        model,
        tokenizer,
        name="reward_model",
        save_more=lambda folder: save_head(head, folder),
        kind="reward_model",
        datasets={"preference": report, "eval": eval_report},
        data_stats={"train_pairs": len(train), "eval_pairs": len(held_out)},
        title=f"Reward model on {base.ref}",
        plot=partial(
            plot_loss_curve, loss_label="pairwise loss, -log sigmoid(r_chosen - r_rejected)"
        ),
        eval_pairs=len(held_out),
        pairwise_accuracy=final.get("eval_accuracy"),
        eval_reward_margin=final.get("eval_reward_margin"),
    )
    return RewardModelResult(
        pairwise_accuracy=final.get("eval_accuracy"),
        eval_pairs=len(held_out),
        **run.result(bundle_dir),
    )


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
        batch = to_device(batch, head.weight.device)
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

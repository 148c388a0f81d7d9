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

Each step trains through the fast path every LoRA recipe shares (tunelab.training.fast_path):
the fused LoRA forward, bf16 where the CPU is fast at it, and the prompt prefix the batch's
chosen and rejected sequences share computed once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Unpack

import numpy as np
import torch
from safetensors.torch import load_file, save

from tunelab.configs.dpo import DPOConfig
from tunelab.data.preference import EncodedPair, collate_pairs, load_preference, pair_lengths
from tunelab.losses.dpo import dpo_loss
from tunelab.losses.rl import sequence_logprobs
from tunelab.models.device import to_device
from tunelab.training.atomic import write_bytes
from tunelab.training.fast_path import FastPath
from tunelab.training.lora import adapter_model, lora_model
from tunelab.training.metrics import plot_loss_curve
from tunelab.training.run import BatchOrder, RunHooks, RunResult, TrainingRun

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DPOResult(RunResult):
    evaluation: dict[str, float]
    """Last evaluation on the validation pairs (empty without them)."""


REFERENCE_FILE = "reference_logps.safetensors"
"""The reference's log-probabilities of every pair, in the run folder."""


def train_dpo(
    config: DPOConfig,
    preference_file: Path,
    run_dir: Path,
    validation_file: Path | None = None,
    init_adapter_dir: Path | None = None,
    **hooks: Unpack[RunHooks],
) -> DPOResult:
    """Tune a LoRA adapter (a new one, or ``init_adapter_dir``'s) on the pairs of
    ``preference_file`` into ``run_dir/adapter``; ``validation_file``'s pairs are evaluated."""
    # ---------------------------------------------------------------- data
    run = TrainingRun(run_dir, config, **hooks)
    base, tokenizer = run.load_base_model()
    lengths_kw = dict(
        prompt_sequence_length=config.prompt_sequence_length,
        target_sequence_length=config.target_sequence_length,
    )
    run.report("validating", f"reading {preference_file}")
    train, report = load_preference(preference_file, tokenizer, **lengths_kw)
    val: list[EncodedPair] = []
    val_report = None
    if validation_file is not None:
        val, val_report = load_preference(validation_file, tokenizer, **lengths_kw)
    pad_id = tokenizer.pad_token_id

    # ---------------------------------------------------------------- model and reference
    if init_adapter_dir is not None:
        model = adapter_model(init_adapter_dir, base.path)
    else:
        model = lora_model(base.path, config.adapter_size, config.lora_alpha)
    run.place(model)
    head = model.get_output_embeddings()
    order = BatchOrder(pair_lengths(train), config.batch_size, config.seed)
    total_steps = config.total_steps(len(train))
    fast = run.fast_path(model)  # before any step: the reference is computed as they compute

    # The reference: this model before any step. Its log-probs are computed once, for the pairs
    # the run will train on (the batch order is known in advance; computed as the steps compute
    # theirs, so that policy and reference agree at step 0) and the validation pairs (as
    # evaluation computes), and kept in the run folder so a resumed run reads them back.
    reference_path = run_dir / REFERENCE_FILE
    # With several processes each computes the pairs of its own shares; only rank 0 keeps its
    # file, and a rank never trusts a file that lacks a pair it needs.
    needed = sorted({i for step in range(total_steps) for i in run.share_of(order.at(step))})
    reference = _load_reference(reference_path, len(train), len(val)) if run.world.is_main else None
    if reference is not None and reference["train"][needed].isnan().any():
        reference = None
    reference_start = time.perf_counter()
    if reference is None:
        run.report("preparing", "reference log-probabilities")
        reference = {
            "train": torch.full((len(train), 2), float("nan")),  # NaN: never trained on
            "validation": answer_logprobs(model, val if run.world.is_main else [], pad_id),
        }
        reference["train"][needed] = answer_logprobs(
            model, [train[i] for i in needed], pad_id, fast
        )
        if run.world.is_main:
            write_bytes(reference_path, save({k: v.contiguous() for k, v in reference.items()}))
    reference = {k: v.to(run.device) for k, v in reference.items()}
    reference_seconds = time.perf_counter() - reference_start

    fast = run.start_lora(
        model, tokenizer, total_steps=total_steps, order=order, validating=bool(val)
    )

    # ---------------------------------------------------------------- train
    model.train()
    for step in run.steps():
        indices = run.local_batch(step)  # this rank's share of the step's pairs
        batch = run.batch(collate_pairs([train[i] for i in indices], pad_id))  # (2B, T)
        hidden, p = fast.hidden(batch.input_ids, batch.response_mask)  # from the shared prefix p
        logps = sequence_logprobs(hidden, head, batch.input_ids[:, p:], batch.response_mask[:, p:])
        policy_chosen, policy_rejected = logps.chunk(2)  # (B,), (B,)
        ref = reference["train"][torch.as_tensor(indices, device=run.device)]  # (B, 2)
        terms = dpo_loss(policy_chosen, policy_rejected, ref[:, 0], ref[:, 1], config.beta)
        run.backward_and_step(
            terms.loss,
            tokens=batch.tokens,
            weight=len(indices),  # the loss is a mean over pairs
            reward_accuracy=terms.accuracy,
            reward_margin=terms.margins.mean().item(),
            chosen_reward=terms.chosen_rewards.mean().item(),
            rejected_reward=terms.rejected_rewards.mean().item(),
        )
        if run.evaluation_due():
            run.evaluate(
                lambda: evaluate_dpo(model, val, reference["validation"], config.beta, pad_id)
            )

    # ---------------------------------------------------------------- save
    evaluation = run.last_eval
    run.usage(
        billable_tokens=run.billable_tokens(report.total_tokens),
        reference_seconds=round(reference_seconds, 3),  # this process's share (0 on resume)
    )

    adapter_dir = run.write_bundle(
        model,
        tokenizer,
        title=f"DPO on {base.ref}",
        plot=partial(plot_loss_curve, loss_label="DPO loss"),
        datasets={"preference": report, "validation": val_report},
        init_adapter=str(init_adapter_dir) if init_adapter_dir else None,
        evaluation=evaluation,
    )
    return DPOResult(evaluation=evaluation, **run.result(adapter_dir))


@torch.no_grad()
def answer_logprobs(
    model, pairs: Sequence[EncodedPair], pad_id: int, fast: FastPath | None = None
) -> torch.Tensor:
    """(n, 2) summed log-probabilities of each pair's chosen and rejected answer, on the CPU
    (kept in the run folder); computed on the model's device, by ``fast`` as a training step
    computes (precision, shared prefixes), else in fp32 as evaluation computes."""
    out = torch.zeros(len(pairs), 2)
    if not pairs:
        return out
    model.eval()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    device = head.weight.device
    order = np.argsort(pair_lengths(pairs), kind="stable")
    batch_size = 16 if fast else 8  # no graph kept: more pairs share their prefixes at once
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = to_device(collate_pairs([pairs[i] for i in idx], pad_id), device)
        ids, mask = batch.input_ids, batch.response_mask
        if fast:
            hidden, p = fast.hidden_no_grad(ids, mask)
            logps = sequence_logprobs(hidden, head, ids[:, p:], mask[:, p:])
        else:
            logps = sequence_logprobs(decoder(input_ids=ids).last_hidden_state, head, ids, mask)
        chosen, rejected = logps.chunk(2)
        out[torch.as_tensor(idx)] = torch.stack([chosen, rejected], dim=1).cpu()
    return out


def evaluate_dpo(
    model, pairs: Sequence[EncodedPair], reference: torch.Tensor, beta: float, pad_id: int
) -> dict[str, float]:
    """DPO loss, reward accuracy and margins on held-out pairs; the log-prob margin
    log pi(y_w) - log pi(y_l) of the policy next to the reference's."""
    policy = answer_logprobs(model, pairs, pad_id).to(reference.device)  # (n, 2)
    terms = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta)
    return {
        "eval_loss": terms.loss.item(),
        "eval_reward_accuracy": terms.accuracy,
        "eval_reward_margin": terms.margins.mean().item(),
        "eval_logp_margin": (policy[:, 0] - policy[:, 1]).mean().item(),
        "eval_reference_logp_margin": (reference[:, 0] - reference[:, 1]).mean().item(),
    }


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

"""Stage 2 of RLHF, reinforcement learning: setup -> train -> save, readable top to bottom.

    tunelab tune rlhf --preference examples/preference/preference.jsonl \
        --prompts examples/preference/prompts.jsonl --eval examples/preference/eval_prompts.jsonl \
        --name concise

The policy (a LoRA adapter on the base model) is optimised against the reward model of stage 1
(:mod:`tunelab.recipes.reward_model`) with a KL penalty to the reference, the base model itself.

**RLOO, not PPO** (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
for Learning from Human Feedback in LLMs"). Each step samples ``k`` answers per prompt and uses
the mean reward of the other ``k - 1`` as each answer's baseline (:mod:`tunelab.losses.rl`).
On a CPU that choice is forced by cost: PPO trains a value model (a critic as large as the
policy, or at least its forward and backward passes) and takes several clipped epochs over every
batch, while RLOO needs one forward/backward of the policy per answer and nothing else. Ahmadian
et al. find RLOO matches or beats PPO on RLHF benchmarks: the whole answer is one action, so
PPO's per-token credit assignment and its critic buy little, and with one gradient step per
fresh batch the samples are on-policy, so no importance ratio or clipping is needed.

**One copy of the weights.** Policy, reference and reward model share one base model in memory:

- the policy is the adapter ``default`` (trainable);
- the reward model's adapter is loaded beside it as ``reward`` (frozen) and switched on with
  ``set_adapter`` only while scoring, its scalar head kept apart;
- the reference is the same model with every adapter switched off (``disable_adapter()``), and
  with ``kl_coeff = 0`` its pass is skipped entirely.

**Per step** (``P`` prompts x ``k`` samples): sample answers of at most
``target_sequence_length`` tokens at temperature 1 (the policy's own distribution, as REINFORCE
requires), score them, compute reference log-probabilities, then one policy forward/backward.
Logged per step: mean reward-model score, KL to the reference, answer length, the penalised
reward, the loss, and how many answers ended by themselves.

**Resumable.** Sampling is seeded by ``(seed, step)``, and the prompt order, learning rate and
optimizer state are functions of the step restored from the checkpoint, so a run killed at any
point and resumed ends with the adapter an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab import __version__
from tunelab.bundle import MANIFEST, file_hashes, read_tuning_config, verify_adapter_bundle
from tunelab.configs.rlhf import RLHFConfig
from tunelab.data.batching import collate, epoch_batches
from tunelab.data.preference import EncodedPrompt, ended, load_prompts, sequence
from tunelab.losses.rl import (
    kl_penalty,
    penalized_rewards,
    rloo_advantages,
    rloo_loss,
    sequence_logprobs,
)
from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
from tunelab.recipes.reward_model import load_head, lora_model, score
from tunelab.recipes.sft import TrainingInterrupted
from tunelab.serving.generation import GenerationParams
from tunelab.serving.runner import ModelRunner, sample_answers
from tunelab.training.atomic import atomic_dir, write_bytes, write_json
from tunelab.training.checkpoint import LoopState, load_latest, save_checkpoint
from tunelab.training.metrics import MetricsLog
from tunelab.training.progress import Progress, ProgressCallback, no_progress

logger = logging.getLogger(__name__)

POLICY, REWARD = "default", "reward"
"""Adapter names on the one shared base model."""


@dataclass
class PolicyResult:
    adapter_dir: Path
    steps: int
    last: dict[str, Any]
    """The last step's metrics row."""
    resumed_from_step: int
    usage: dict[str, Any] = field(default_factory=dict)


def train_policy(
    config: RLHFConfig,
    prompts_file: Path,
    reward_model_dir: Path,
    run_dir: Path,
    *,
    on_progress: ProgressCallback = no_progress,
    should_stop: Callable[[], bool] = lambda: False,
) -> PolicyResult:
    # ---------------------------------------------------------------- setup
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)
    on_progress(Progress("loading", message=f"resolving base model {config.base_model}"))
    base = resolve_model(config.base_model)
    _check_same_base(reward_model_dir, base.path)
    tokenizer = load_tokenizer(base.path)
    on_progress(Progress("validating", message=f"reading {prompts_file}"))
    prompts, report = load_prompts(
        prompts_file,
        tokenizer,
        prompt_sequence_length=config.prompt_sequence_length,
        instruction=config.instruction,
    )

    model = lora_model(base.path, config.adapter_size, config.lora_alpha)  # policy: "default"
    model.load_adapter(reward_model_dir, adapter_name=REWARD, is_trainable=False)
    model.set_adapter(POLICY)
    reward_head = load_head(reward_model_dir)
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    params = [p for p in model.parameters() if p.requires_grad]  # the policy's LoRA only
    optimizer = torch.optim.AdamW(params, lr=config.reinforcement_learning_rate, weight_decay=0.0)

    total_steps = config.reinforcement_learning_train_steps
    P, k = config.prompts_per_step, config.samples_per_prompt
    steps_per_epoch = math.ceil(len(prompts) / P)
    warmup = max(1, int(config.warmup_ratio * total_steps)) if config.warmup_ratio else 0
    pad_id, end_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    lengths = [len(p.input_ids) for p in prompts]

    ckpt_dir, metrics = run_dir / "checkpoints", MetricsLog(run_dir / "metrics.jsonl")
    state = load_latest(ckpt_dir, model, optimizer) or LoopState()
    resumed_from = state.step
    metrics.truncate_after(state.step)

    def learning_rate(step: int) -> float:
        """Linear warm-up, then linear decay to zero (a function of the step: resumable)."""
        lr = config.reinforcement_learning_rate
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    order: dict[int, list[list[int]]] = {}

    def prompts_at(step: int) -> list[EncodedPrompt]:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in order:
            order.clear()
            order[epoch] = epoch_batches(lengths, P, config.seed, epoch)
        return [prompts[i] for i in order[epoch][index]]

    # ---------------------------------------------------------------- train
    last: dict[str, Any] = {}
    timer_start, timer_step = time.perf_counter(), state.step
    while state.step < total_steps:
        if should_stop():
            save_checkpoint(ckpt_dir, model, optimizer, state)
            raise TrainingInterrupted(f"stopped at step {state.step}; the same command resumes it")
        step_start = time.perf_counter()
        lr = learning_rate(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # 1. Rollouts: k answers per prompt from the current policy, seeded by the step.
        batch_prompts = prompts_at(state.step)
        torch.manual_seed(_step_seed(config.seed, state.step))
        answers, cut = sample_answers(
            ModelRunner(model, tokenizer),
            [p.input_ids for p in batch_prompts],
            k,
            GenerationParams.model_construct(  # unchecked: the config bounds the length
                temperature=1.0,  # the policy's own distribution, as REINFORCE requires
                top_k=0,
                top_p=1.0,
                max_output_tokens=config.target_sequence_length,
                seed=_step_seed(config.seed, state.step),
            ),
        )  # P*k answers, prompt-major: answers[i*k + j] is the j-th answer to prompt i
        rollout_seconds = time.perf_counter() - step_start
        prompt_of = [p.input_ids for p in batch_prompts for _ in range(k)]
        batch = collate([sequence(p, a) for p, a in zip(prompt_of, answers, strict=True)], pad_id)
        ids, mask = batch.input_ids, batch.loss_mask  # (N, T), N = P*k; mask: answer tokens

        # 2. Reward-model scores and reference log-probs: no gradient, same base weights.
        with torch.no_grad():
            scored = [
                sequence(p, ended(a, c, end_id))
                for p, a, c in zip(prompt_of, answers, cut, strict=True)
            ]
            scored_batch = collate(scored, pad_id)
            scored_lengths = torch.tensor([len(s.input_ids) for s in scored])
            with active_adapter(model, REWARD):
                scores = score(model, reward_head, scored_batch.input_ids, scored_lengths)  # (N,)
            reference = None
            if config.kl_coeff > 0:
                with model.disable_adapter():
                    ref_hidden = decoder(input_ids=ids).last_hidden_state
                    reference = sequence_logprobs(ref_hidden, lm_head, ids, mask)  # (N,)

        # 3. One policy-gradient step with RLOO advantages on the KL-penalised rewards.
        hidden = decoder(input_ids=ids).last_hidden_state  # (N, T, C)
        logprobs = sequence_logprobs(hidden, lm_head, ids, mask)  # (N,)
        kl = kl_penalty(logprobs.detach(), reference) if reference is not None else None
        rewards = penalized_rewards(scores, kl, config.kl_coeff) if kl is not None else scores
        advantages = rloo_advantages(rewards.view(len(batch_prompts), k)).view(-1)  # (N,)
        loss = rloo_loss(logprobs, advantages)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - step_start
        state.step += 1
        state.tokens_seen += batch.tokens
        state.train_seconds += elapsed
        answer_lengths = torch.tensor([len(a) for a in answers], dtype=torch.float32)
        last = {
            "step": state.step,
            "epoch": state.step / steps_per_epoch,
            "train_loss": loss.item(),
            "reward": scores.mean().item(),
            "kl": kl.mean().item() if kl is not None else None,
            "penalized_reward": rewards.mean().item(),
            "response_length": answer_lengths.mean().item(),
            "ended_share": 1.0 - float(np.mean(cut)),
            "learning_rate": lr,
            "grad_norm": float(grad_norm),
            "tokens": batch.tokens,
            "rollout_seconds": rollout_seconds,
            "step_seconds": elapsed,
        }
        metrics.append(last)
        if state.step % config.checkpoint_every_steps == 0 and state.step < total_steps:
            save_checkpoint(ckpt_dir, model, optimizer, state)
        rate = (time.perf_counter() - timer_start) / max(1, state.step - timer_step)
        on_progress(
            Progress(
                "training",
                state.step,
                total_steps,
                train_loss=last["train_loss"],
                eta_seconds=rate * (total_steps - state.step),
                message=f"reward {last['reward']:.3f}",
            )
        )

    # ---------------------------------------------------------------- save
    on_progress(Progress("saving", state.step, total_steps, message="writing the policy adapter"))
    usage = {
        "trained_tokens": state.tokens_seen,
        "train_seconds": round(state.train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    adapter_dir = run_dir / "adapter"
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[POLICY])
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / "tuning_config.json", {**config.model_dump(), "base_model_path": str(base.path)}
        )
        write_json(tmp / "data_stats.json", {"prompts": report.to_dict()})
        shutil.copyfile(metrics.path, tmp / "metrics.jsonl")
        plot_rewards(metrics.rows(), tmp / "reward_curve.png", title=f"RLHF (RLOO) on {base.ref}")
        write_json(
            tmp / MANIFEST,
            {
                "kind": "lora_adapter",
                "method": config.method,
                "base_model": base.ref,
                "tunelab_version": __version__,
                "prompts_dataset_sha256": report.sha256,
                "reward_model": read_tuning_config(reward_model_dir),
                "steps": state.step,
                "usage": usage,
                "files": file_hashes(tmp),
            },
        )
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    on_progress(Progress("done", state.step, total_steps))
    return PolicyResult(adapter_dir, state.step, last, resumed_from, usage)


# -------------------------------------------------------------------- adapters


@contextmanager
def active_adapter(model, name: str) -> Iterator[None]:
    """Run with adapter ``name`` (frozen), then switch the policy back on (trainable)."""
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(POLICY)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _check_same_base(reward_model_dir: Path, base_path: Path) -> None:
    verify_adapter_bundle(reward_model_dir)  # before PEFT reads it: safetensors, sha256s
    rm_base = read_tuning_config(reward_model_dir)["base_model"]
    if resolve_model(rm_base).path != base_path:
        raise ValueError(
            f"the reward model was trained on {rm_base!r}, not on this run's base model "
            f"({base_path}): policy and reward model must share one base model"
        )


# -------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_policy(
    policy_dir: Path,
    reward_model_dir: Path,
    eval_file: Path,
    *,
    batch_size: int = 16,
    examples: int = 5,
) -> dict[str, Any]:
    """Tuned policy against the base model on held-out prompts, judged by the reward model.

    Both answer every prompt greedily (deterministic, and what a user gets at temperature 0);
    the reward model scores both. Reports mean rewards, the tuned model's win rate (strictly
    higher reward; ties, e.g. identical answers, are not wins), mean answer lengths, and a few
    examples. One base model in memory, with the policy and reward adapters on it.
    """
    from peft import PeftModel

    for bundle in (policy_dir, reward_model_dir):  # safetensors only, sha256s as listed
        verify_adapter_bundle(bundle)
    config = RLHFConfig(**_config_fields(read_tuning_config(policy_dir)))
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    prompts, report = load_prompts(
        eval_file,
        tokenizer,
        prompt_sequence_length=config.prompt_sequence_length,
        instruction=config.instruction,
    )
    model = PeftModel.from_pretrained(load_causal_lm(base.path), policy_dir, adapter_name=POLICY)
    model.load_adapter(reward_model_dir, adapter_name=REWARD, is_trainable=False)
    model.set_adapter(POLICY, inference_mode=True)
    model.eval()
    head = load_head(reward_model_dir)
    end_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    def answer_and_score(use_policy: bool) -> tuple[list[np.ndarray], torch.Tensor]:
        answers, cut = [], []
        greedy = GenerationParams.model_construct(  # unchecked: the config bounds the length
            temperature=0.0, top_k=0, top_p=1.0, max_output_tokens=config.target_sequence_length
        )
        for start in range(0, len(prompts), batch_size):
            chunk = [p.input_ids for p in prompts[start : start + batch_size]]
            if use_policy:
                a, c = sample_answers(ModelRunner(model, tokenizer), chunk, 1, greedy)
            else:
                with model.disable_adapter():
                    a, c = sample_answers(ModelRunner(model, tokenizer), chunk, 1, greedy)
            answers += a
            cut += c
        scores = []
        with active_adapter(model, REWARD):
            for start in range(0, len(prompts), batch_size):
                seqs = [
                    sequence(p.input_ids, ended(a, c, end_id))
                    for p, a, c in zip(
                        prompts[start : start + batch_size],
                        answers[start : start + batch_size],
                        cut[start : start + batch_size],
                        strict=True,
                    )
                ]
                lengths = torch.tensor([len(s.input_ids) for s in seqs])
                scores.append(score(model, head, collate(seqs, pad_id).input_ids, lengths))
        model.set_adapter(POLICY, inference_mode=True)
        return answers, torch.cat(scores)

    base_answers, base_scores = answer_and_score(use_policy=False)
    tuned_answers, tuned_scores = answer_and_score(use_policy=True)

    def text(ids: np.ndarray) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    return {
        "prompts": len(prompts),
        "eval_dataset_sha256": report.sha256,
        "mean_reward_base": base_scores.mean().item(),
        "mean_reward_tuned": tuned_scores.mean().item(),
        "win_rate": (tuned_scores > base_scores).float().mean().item(),
        "tie_rate": (tuned_scores == base_scores).float().mean().item(),
        "mean_length_base": float(np.mean([len(a) for a in base_answers])),
        "mean_length_tuned": float(np.mean([len(a) for a in tuned_answers])),
        "examples": [
            {
                "prompt": p.text,
                "base": text(b),
                "tuned": text(t),
                "reward_base": rb,
                "reward_tuned": rt,
            }
            for p, b, t, rb, rt in zip(
                prompts[:examples],
                base_answers,
                tuned_answers,
                base_scores.tolist(),
                tuned_scores.tolist(),
                strict=False,
            )
        ],
    }


def _config_fields(saved: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in saved.items() if k in RLHFConfig.model_fields}


def plot_rewards(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Mean reward-model score and KL to the reference against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from io import BytesIO

    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows if "reward" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["reward"] for r in rows if "reward" in r], color="#3182bd", label="reward")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward-model score")
    kls = [(r["step"], r["kl"]) for r in rows if r.get("kl") is not None]
    if kls:
        right = ax.twinx()
        right.plot(*zip(*kls, strict=True), color="#e6550d", label="KL to reference")
        right.set_ylabel("KL (nats per answer)")
        right.legend(loc="lower right")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())

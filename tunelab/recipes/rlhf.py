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
Rollouts run in eval mode, from a bf16 copy of the policy with its LoRA merged in where the
run computes in bf16 (tunelab.training.sampling_policy); the reward scores, the reference pass
and the policy's forward/backward all run through the fast path every LoRA recipe shares
(tunelab.training.fast_path: fused LoRA forward, bf16 where the CPU is fast at it, the tokens
the samples of a prompt share computed once), the first two without a gradient; in a bf16 run
the answers' log-probabilities go through the output head in bf16 too (FastPath.output_head).
Logged per step: mean reward-model score, KL to the reference, answer length, the penalised
reward, the loss, and how many answers ended by themselves.

**Resumable.** Sampling is seeded by ``(seed, step)``, and the prompt order, learning rate and
optimizer state are functions of the step restored from the checkpoint, so a run killed at any
point and resumed ends with the adapter an uninterrupted run would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import torch

from tunelab.bundle import read_tuning_config, verify_adapter_bundle
from tunelab.configs.rlhf import RLHFConfig
from tunelab.data.batching import collate
from tunelab.data.preference import EncodedPrompt, ended, load_prompts, sequence
from tunelab.evaluation.generate import greedy_params, policy_answers
from tunelab.losses.rl import (
    kl_penalty,
    penalized_rewards,
    rloo_advantages,
    rloo_loss,
    sequence_logprobs,
)
from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
from tunelab.models.device import resolve_placement
from tunelab.models.reward_head import load_head, score
from tunelab.serving.generation import GenerationParams
from tunelab.serving.runner import ModelRunner, sample_answers
from tunelab.training.lora import lora_model
from tunelab.training.run import BatchOrder, RunHooks, RunResult, TrainingRun
from tunelab.training.sampling_policy import SamplingPolicy, rollout_params

logger = logging.getLogger(__name__)

POLICY, REWARD = "default", "reward"
"""Adapter names on the one shared base model."""


@dataclass(kw_only=True)
class PolicyResult(RunResult):
    last: dict[str, Any]
    """The last step's metrics row."""


def train_policy(
    config: RLHFConfig,
    prompts_file: Path,
    reward_model_dir: Path,
    run_dir: Path,
    **hooks: Unpack[RunHooks],
) -> PolicyResult:
    """Tune a policy adapter on ``prompts_file``'s prompts against the reward model bundle
    ``reward_model_dir`` (RLOO) into ``run_dir/adapter``."""
    # ---------------------------------------------------------------- data
    run = TrainingRun(run_dir, config, **hooks)
    run.report("loading", f"resolving base model {config.base_model}")
    base = resolve_model(config.base_model)
    _check_same_base(reward_model_dir, base.path)
    tokenizer = load_tokenizer(base.path)
    run.report("validating", f"reading {prompts_file}")
    prompts, report = load_prompts(
        prompts_file,
        tokenizer,
        prompt_sequence_length=config.prompt_sequence_length,
        instruction=config.instruction,
    )
    pad_id, end_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    # ---------------------------------------------------------------- model
    model = lora_model(base.path, config.adapter_size, config.lora_alpha)  # policy: "default"
    verify_adapter_bundle(reward_model_dir)  # safetensors only, every file as listed
    model.load_adapter(reward_model_dir, adapter_name=REWARD, is_trainable=False)
    model.set_adapter(POLICY)
    run.place(model)  # policy, reward adapter and reference: one copy on the run's device
    reward_head = run.place(load_head(reward_model_dir))
    k = config.samples_per_prompt
    order = BatchOrder([len(p.input_ids) for p in prompts], config.prompts_per_step, config.seed)
    run.start(
        model,  # its trainable parameters: the policy's LoRA only
        learning_rate=config.reinforcement_learning_rate,
        total_steps=config.reinforcement_learning_train_steps,
        order=order,
    )
    fast = run.fast_path(model)
    sampling = SamplingPolicy(model, fast.precision, adapter=POLICY)  # what rollouts decode
    lm_head = fast.output_head()  # bf16 in a bf16 run (tunelab.training.output_head)
    run.keep_checkpoints(model, tokenizer, config.keep_checkpoints, adapters=[POLICY])

    # ---------------------------------------------------------------- train
    last: dict[str, Any] = {}
    for step in run.steps():
        # 1. Rollouts: k answers per prompt from the current policy, seeded by the step.
        model.eval()
        share = run.local_batch(step)  # this rank's share of the step's prompts
        batch_prompts = [prompts[i] for i in share]
        # Prompt i of the global batch draws with seed (step seed + i * k) on whichever rank it
        # falls: the rollouts do not depend on how many processes share the batch.
        seed = _step_seed(config.seed, step) + run.order.at(step).index(share[0]) * k
        torch.manual_seed(_step_seed(config.seed, step))
        answers, cut = sample_answers(
            ModelRunner(sampling.current(), tokenizer),  # the adapter as it is now
            [p.input_ids for p in batch_prompts],
            k,
            # temperature 1: the policy's own distribution, as REINFORCE requires
            rollout_params(1.0, config.target_sequence_length, seed),
        )  # P*k answers, prompt-major: answers[i*k + j] is the j-th answer to prompt i
        rollout_seconds = run.step_seconds()
        model.train()  # from here on: the policy pass needs it; hidden_no_grad sets its own
        prompt_of = [p.input_ids for p in batch_prompts for _ in range(k)]
        batch = collate([sequence(p, a) for p, a in zip(prompt_of, answers, strict=True)], pad_id)
        batch = run.batch(batch)
        ids, mask = batch.input_ids, batch.loss_mask  # (N, T), N = P*k; mask: answer tokens

        # 2. Reward-model scores and reference log-probs: no gradient, same base weights,
        # computed as the step's own forward computes (precision, shared prefixes).
        scored = [
            sequence(p, ended(a, c, end_id))
            for p, a, c in zip(prompt_of, answers, cut, strict=True)
        ]
        scored_ids = run.batch(collate(scored, pad_id).input_ids)
        scored_lengths = torch.tensor([len(s.input_ids) for s in scored], device=run.device)
        # Each score is read at its row's last token, the only state the head reads: every
        # real token counts as the row's, and the last layer computes that one alone.
        real = torch.arange(scored_ids.shape[1], device=run.device) < scored_lengths[:, None]
        with active_adapter(model, REWARD):
            last_hidden = fast.hidden_at_no_grad(scored_ids, real, scored_lengths - 1)  # (N, C)
        scores = reward_head(last_hidden).squeeze(-1).float()  # (N,)
        reference = None
        if config.kl_coeff > 0:
            with model.disable_adapter(), torch.no_grad():
                hidden, p = fast.hidden_no_grad(ids, mask)
                reference = sequence_logprobs(hidden, lm_head, ids[:, p:], mask[:, p:])  # (N,)

        # 3. One policy-gradient step with RLOO advantages on the KL-penalised rewards.
        hidden, p = fast.hidden(ids, mask)  # (N, T - p, C): the shared prompt prefix p once
        logprobs = sequence_logprobs(hidden, lm_head, ids[:, p:], mask[:, p:])  # (N,)
        kl = kl_penalty(logprobs.detach(), reference) if reference is not None else None
        rewards = penalized_rewards(scores, kl, config.kl_coeff) if kl is not None else scores
        advantages = rloo_advantages(rewards.view(len(batch_prompts), k)).view(-1)  # (N,)
        loss = rloo_loss(logprobs, advantages)
        run.message = f"reward {scores.mean().item():.3f}"
        last = run.backward_and_step(
            loss,
            tokens=batch.tokens,
            weight=len(answers),  # the loss is a mean over the samples
            reward=scores.mean().item(),
            kl=kl.mean().item() if kl is not None else None,
            penalized_reward=rewards.mean().item(),
            response_length=float(np.mean([len(a) for a in answers])),
            ended_share=1.0 - float(np.mean(cut)),
            rollout_seconds=rollout_seconds,
        )

    # ---------------------------------------------------------------- save
    adapter_dir = run.write_bundle(
        model,
        tokenizer,
        adapters=[POLICY],
        datasets={"prompts": report},
        title=f"RLHF (RLOO) on {base.ref}",
        plot=plot_rewards,
        plot_name="reward_curve.png",
        reward_model=read_tuning_config(reward_model_dir),
    )
    return PolicyResult(last=last, **run.result(adapter_dir))


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
    device = resolve_placement(config.accelerator, config.devices).device
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
    model.eval().to(device)
    head = load_head(reward_model_dir).to(device)

    greedy = greedy_params(config.target_sequence_length)
    judge = {"head": head, "tokenizer": tokenizer, "batch_size": batch_size}
    base_answers, base_scores = answers_and_scores(model, prompts, greedy, policy=False, **judge)
    tuned_answers, tuned_scores = answers_and_scores(model, prompts, greedy, **judge)

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


@torch.no_grad()
def answers_and_scores(
    model,
    prompts: list[EncodedPrompt],
    params: GenerationParams,
    *,
    head: torch.nn.Module,
    tokenizer,
    samples: int = 1,
    batch_size: int = 16,
    policy: bool = True,
) -> tuple[list[np.ndarray], torch.Tensor]:
    """``samples`` answers to each prompt (prompt-major) from the policy adapter of ``model``
    (a PEFT model holding the adapters ``POLICY`` and ``REWARD``), or with ``policy=False``
    from the base model under it, and the reward model's score of each: how
    :func:`evaluate_policy` judges a tuned policy against its base."""
    model.set_adapter(POLICY, inference_mode=True)
    answers, cut = policy_answers(
        model, tokenizer, prompts, params, batch_size, samples=samples, adapter=policy
    )
    with active_adapter(model, REWARD):
        scores = reward_scores(model, head, tokenizer, prompts, answers, cut, batch_size)
    model.set_adapter(POLICY, inference_mode=True)
    return answers, scores


@torch.no_grad()
def reward_scores(
    scorer,
    head: torch.nn.Module,
    tokenizer,
    prompts: list[EncodedPrompt],
    answers: list[np.ndarray],
    cut: list[bool],
    batch_size: int = 16,
) -> torch.Tensor:
    """The reward model's score of each answer, as the RL steps score them (the end-of-sequence
    token kept where the answer drew it). ``answers`` are prompt-major, the same number for
    every prompt; ``scorer`` computes as the reward model (its adapter active, or merged in)."""
    per_prompt = len(answers) // len(prompts)
    prompt_of = [p for p in prompts for _ in range(per_prompt)]
    end_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = head.weight.device
    scores = []
    for start in range(0, len(answers), batch_size):
        seqs = [
            sequence(p.input_ids, ended(a, c, end_id))
            for p, a, c in zip(
                prompt_of[start : start + batch_size],
                answers[start : start + batch_size],
                cut[start : start + batch_size],
                strict=True,
            )
        ]
        lengths = torch.tensor([len(s.input_ids) for s in seqs], device=device)
        ids = collate(seqs, pad_id).input_ids.to(device)
        scores.append(score(scorer, head, ids, lengths))
    return torch.cat(scores)


def _config_fields(saved: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in saved.items() if k in RLHFConfig.model_fields}


def plot_rewards(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Mean reward-model score and KL to the reference against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunelab.training.metrics import save_figure

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
    save_figure(fig, ax, path, title, legend_loc="upper left")

"""Reinforcement fine-tuning with a grader: setup -> train -> save, readable top to bottom.

    tunelab tune rft --train examples/rft/train.jsonl --validation examples/rft/validation.jsonl \
        --grader examples/rft/grader.json --name answer-format

A policy (a LoRA adapter on the base model) learns to write answers a *program* scores well:
the grader of the config (:mod:`tunelab.graders`), not a learned reward model as in RLHF.

**GRPO-style** (Shao et al. 2024, :mod:`tunelab.losses.grpo`): each step samples ``k`` answers
to each of ``P`` prompts from the current policy at the config's temperature, grades them, and
uses each group's mean reward as its baseline (optionally dividing by its std). As in the RLHF
recipe's RLOO, one gradient step per fresh batch keeps it on-policy, so there is no value model
and no importance ratio. Graders give sparse, often binary rewards: a group that all passes or
all fails has zero advantages, which is why the group, not a running average, is the baseline.

**KL to the base.** The reference is the base model itself (every adapter switched off on the
same weights, one copy in memory); its per-token log-probabilities give the k3 KL estimate that
the loss adds with weight ``kl_coeff`` (0 skips the reference pass).

**Grading never stops the run.** A ``python`` grader that times out, crashes or returns garbage
scores 0 for that answer; the step's ``grader_failures`` counts them.

**Resumable** like the other recipes: sampling is seeded by ``(seed, step)``; prompt order,
learning rate and optimizer state come from the step restored from the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import torch

from tunelab.bundle import read_tuning_config, verify_adapter_bundle
from tunelab.configs.rft import RFTConfig
from tunelab.data.batching import collate
from tunelab.data.preference import sequence
from tunelab.data.rft import load_rft
from tunelab.evaluation.generate import greedy_answers
from tunelab.graders.build import Grader, Grades, ModelLocator, build_grader
from tunelab.losses.grpo import group_advantages, grpo_loss, k3_kl, token_logprobs
from tunelab.models import load_causal_lm, load_tokenizer, resolve_model
from tunelab.serving.runner import ModelRunner, sample_answers
from tunelab.training.lora import lora_model
from tunelab.training.run import BatchOrder, RunHooks, RunResult, TrainingRun
from tunelab.training.sampling_policy import SamplingPolicy, rollout_params

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RFTResult(RunResult):
    last: dict[str, Any]
    """The last step's metrics row."""
    grader_failures: int
    """Answers the grader failed on (scored 0) over the whole run."""


def train_rft(
    config: RFTConfig,
    train_file: Path,
    run_dir: Path,
    *,
    locate_model: ModelLocator | None = None,
    **hooks: Unpack[RunHooks],
) -> RFTResult:
    """Tune a policy adapter on ``train_file``'s prompts toward the config's grader, into
    ``run_dir/adapter``. ``locate_model`` finds a ``score_model`` grader's reward model."""
    # ---------------------------------------------------------------- data
    run = TrainingRun(run_dir, config, **hooks)
    base, tokenizer = run.load_base_model()
    run.report("validating", f"reading {train_file}")
    prompts, items, report = load_rft(
        train_file,
        tokenizer,
        config.grader,
        prompt_sequence_length=config.prompt_sequence_length,
        instruction=config.instruction,
    )
    grader = build_grader(config.grader, locate_model=locate_model)
    pad_id = tokenizer.pad_token_id

    # ---------------------------------------------------------------- model
    model = lora_model(base.path, config.adapter_size, config.lora_alpha)
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    k = config.samples_per_prompt
    order = BatchOrder([len(p.input_ids) for p in prompts], config.prompts_per_step, config.seed)
    run.start(
        model, learning_rate=config.learning_rate, total_steps=config.train_steps, order=order
    )
    fast = run.fast_path(model)
    sampling = SamplingPolicy(model, fast.precision)  # what rollouts decode

    # ---------------------------------------------------------------- train
    last: dict[str, Any] = {}
    for step in run.steps():
        # 1. Rollouts: k answers per prompt from the current policy, seeded by the step.
        model.eval()
        batch = order.at(step)
        seed = _step_seed(config.seed, step)
        torch.manual_seed(seed)
        answers, cut = sample_answers(
            ModelRunner(sampling.current(), tokenizer),
            [prompts[i].input_ids for i in batch],
            k,
            rollout_params(config.temperature, config.target_sequence_length, seed),
        )  # P*k answers, prompt-major: answers[i*k + j] is the j-th answer to prompt i
        rollout_seconds = run.step_seconds()

        # 2. Grade every answer against its prompt's line (a cut one scores 0 unless asked).
        texts = [_text(tokenizer, a) for a in answers]
        grades = grade_answers(
            grader, texts, [items[i] for i in batch for _ in range(k)], cut, config
        )
        rewards = torch.tensor(grades.scores, dtype=torch.float32)  # (N,), N = P*k
        _log_step(step, texts, grades, k)
        advantages = group_advantages(rewards.view(len(batch), k), config.scale_rewards).view(-1)
        informative = int((advantages.view(len(batch), k) != 0).any(dim=-1).sum())
        # A step where every group's rewards are equal has no policy gradient; its KL term is
        # left out too. At the start (policy = base) that gradient is only rounding noise between
        # the bf16 policy pass and the reference pass, and AdamW scales any gradient, however
        # small, to a step of about the learning rate: measured on the example, one such step at
        # 8e-3 with no answer passing moved the policy 3.8 nats per answer from the base, into
        # incoherent text, before the grader had said anything.
        kl_coeff = config.kl_coeff if informative else 0.0

        prompt_of = [prompts[i].input_ids for i in batch for _ in range(k)]
        seqs = collate([sequence(p, a) for p, a in zip(prompt_of, answers, strict=True)], pad_id)
        ids, mask = seqs.input_ids, seqs.loss_mask  # (N, T); mask: answer tokens

        # 3. Reference log-probs (the base: adapters off, same weights), no gradient.
        ref = None
        if config.kl_coeff > 0:
            with torch.no_grad(), model.disable_adapter():
                ref_hidden = decoder(input_ids=ids).last_hidden_state  # (N, T, C)
                ref = token_logprobs(ref_hidden, lm_head, ids, mask)  # (N, T - 1)

        # 4. One policy step: per-token log-probs, k3 KL to the base, GRPO loss.
        model.train()
        hidden, p = fast.hidden(ids, mask)  # (N, T - p, C): the shared prompt prefix p once
        logps = token_logprobs(hidden, lm_head, ids[:, p:], mask[:, p:])  # (N, T - p - 1)
        answer_mask = mask[:, p + 1 :].float()  # the positions logps counts
        kl = k3_kl(logps, ref[:, p:]) if ref is not None else None
        loss = grpo_loss(logps, answer_mask, advantages, kl, kl_coeff)
        passed = (rewards >= config.pass_threshold).float()
        run.message = f"reward {rewards.mean().item():.3f}, pass {passed.mean().item():.0%}"
        last = run.backward_and_step(
            loss,
            tokens=seqs.tokens,
            reward=rewards.mean().item(),
            reward_std=rewards.std().item(),
            pass_rate=passed.mean().item(),
            informative_groups=informative,
            grader_failures=sum(grades.failures.values()),
            kl=_mean_kl(kl, answer_mask) if kl is not None else None,
            response_length=float(np.mean([len(a) for a in answers])),
            ended_share=1.0 - float(np.mean(cut)),
            rollout_seconds=rollout_seconds,
        )

    # ---------------------------------------------------------------- save
    failures = sum(int(r.get("grader_failures") or 0) for r in run.metrics.rows())
    adapter_dir = run.write_bundle(
        model,
        tokenizer,
        datasets={"train": report},
        title=f"RFT (GRPO) on {base.ref}",
        plot=plot_rewards,
        plot_name="reward_curve.png",
    )
    return RFTResult(last=last, grader_failures=failures, **run.result(adapter_dir))


def grade_answers(
    grader: Grader,
    texts: list[str],
    items: list[dict[str, Any]],
    cut: list[bool],
    config: RFTConfig,
) -> Grades:
    """The grader's scores, except that an answer the token budget cut before it ended scores 0
    ungraded unless ``config.grade_cut_answers``: partial credit for an unfinished answer (a
    regex that still matches ``Answer: 4316000000``, a similarity) rewards running on, and the
    policy learns to repeat digits instead of stopping."""
    graded = [i for i, c in enumerate(cut) if config.grade_cut_answers or not c]
    if len(graded) == len(texts):
        return grader.grade(texts, items)
    scores = np.zeros(len(texts))
    if not graded:
        return Grades(scores)
    some = grader.grade([texts[i] for i in graded], [items[i] for i in graded])
    scores[graded] = some.scores
    parts = {}
    for label, part in some.parts.items():
        parts[label] = np.zeros(len(texts))
        parts[label][graded] = part
    return Grades(scores, some.failures, parts)


def _log_step(step: int, texts: list[str], grades: Grades, k: int) -> None:
    """What the policy writes: the first group's answers and rewards, and each part's mean
    reward (a collapse shows here first, e.g. answers turning into repeated digits)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    parts = ", ".join(f"{label} {p.mean():.2f}" for label, p in grades.parts.items())
    shown = [f"{t[:60]!r} -> {r:.2f}" for t, r in zip(texts, grades.scores, strict=True)]
    logger.info("step %d: %s%s", step, f"parts: {parts}; " if parts else "", "; ".join(shown[:k]))
    logger.debug("step %d, every answer: %s", step, "; ".join(shown))


def _text(tokenizer, answer: np.ndarray) -> str:
    """An answer as the grader reads it: decoded, without the end-of-turn token."""
    return tokenizer.decode(answer, skip_special_tokens=True)


def _mean_kl(kl: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over answers of the summed per-token KL (nats per answer)."""
    return (kl.detach() * mask).sum(-1).mean().item()


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


# -------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_rft(
    adapter_dir: Path,
    eval_file: Path,
    *,
    locate_model: ModelLocator | None = None,
    batch_size: int = 16,
    examples: int = 5,
    resamples: int = 1000,
) -> dict[str, Any]:
    """Tuned policy against the base model on held-out prompts, judged by the grader.

    Both answer every prompt greedily (deterministic: what a user gets at temperature 0). The
    grader scores both as in training (a cut answer scores 0 unless ``grade_cut_answers``);
    reported: mean reward and pass rate of each with percentile-bootstrap
    95% intervals, and the paired-bootstrap interval of tuned - base (same resampled prompts),
    grader failures, and a few examples. One base model in memory, the policy adapter on it.
    """
    from peft import PeftModel

    from tunelab.evaluation.bootstrap import paired_bootstrap
    from tunelab.evaluation.metrics import mean_metric

    verify_adapter_bundle(adapter_dir)  # safetensors only, sha256s as listed
    saved = read_tuning_config(adapter_dir)
    config = RFTConfig(**{k: v for k, v in saved.items() if k in RFTConfig.model_fields})
    base = resolve_model(config.base_model)
    tokenizer = load_tokenizer(base.path)
    prompts, items, report = load_rft(
        eval_file,
        tokenizer,
        config.grader,
        prompt_sequence_length=config.prompt_sequence_length,
        instruction=config.instruction,
    )
    grader = build_grader(config.grader, locate_model=locate_model)
    model = PeftModel.from_pretrained(load_causal_lm(base.path), adapter_dir)
    model.eval()

    def answer(use_policy: bool) -> tuple[list[str], list[bool]]:
        ids, cuts = greedy_answers(
            model, tokenizer, prompts, config.target_sequence_length, batch_size, adapter=use_policy
        )
        return [_text(tokenizer, a) for a in ids], cuts

    answered = {"base": answer(False), "tuned": answer(True)}
    texts = {who: t for who, (t, _) in answered.items()}
    graded = {
        who: grade_answers(grader, t, items, cut, config) for who, (t, cut) in answered.items()
    }
    rewards = [mean_metric(graded[w].scores) for w in ("base", "tuned")]
    passes = [
        mean_metric((graded[w].scores >= config.pass_threshold).astype(float))
        for w in ("base", "tuned")
    ]
    out: dict[str, Any] = {
        "prompts": len(prompts),
        "eval_dataset_sha256": report.sha256,
        "pass_threshold": config.pass_threshold,
    }
    for name, scored in (("mean_reward", rewards), ("pass_rate", passes)):
        paired = paired_bootstrap(scored, resamples=resamples)
        out[f"{name}_base"] = paired.intervals[0].to_dict()
        out[f"{name}_tuned"] = paired.intervals[1].to_dict()
        out[f"{name}_difference"] = paired.differences[1].to_dict()
    out["grader_failures"] = {w: dict(graded[w].failures) for w in graded}
    out["examples"] = [
        {
            "prompt": p.text,
            "base": b,
            "tuned": t,
            "reward_base": float(rb),
            "reward_tuned": float(rt),
        }
        for p, b, t, rb, rt in zip(
            prompts[:examples],
            texts["base"],
            texts["tuned"],
            graded["base"].scores,
            graded["tuned"].scores,
            strict=False,
        )
    ]
    return out


def plot_rewards(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Mean reward and pass rate of the rollouts against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunelab.training.metrics import save_figure

    rows = [r for r in rows if "reward" in r]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["reward"] for r in rows], color="#3182bd", label="mean reward")
    ax.plot(steps, [r["pass_rate"] for r in rows], color="#31a354", label="pass rate")
    ax.set_xlabel("step")
    ax.set_ylabel("rollouts (sampled)")
    save_figure(fig, ax, path, title, legend_loc="upper left")

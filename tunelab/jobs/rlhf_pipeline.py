"""The RLHF pipeline: validate -> reward_model -> reinforcement_learning -> evaluate -> register
-> deploy.

Datasets by role: ``preference`` (pairs), ``prompts``, and optionally ``eval`` (held-out prompts).
Each training stage works in its own folder under the job's workdir (``reward_model/``,
``reinforcement_learning/``) with its own checkpoints, so a job stopped or killed in either
stage resumes there: stages that SUCCEEDED are skipped by the worker, and the reward model's
bundle reaches the next stage through the artifact store (its step outputs hold the reference).

Registration makes two model versions with lineage preference data -> reward model -> policy:
``<name>-reward`` (method ``reward_model``) from the preference dataset, then ``<name>`` (method
``rlhf``) from the prompts and that reward-model version.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunelab.configs.rlhf import RLHFConfig
from tunelab.jobs import steps
from tunelab.jobs.errors import PermanentError
from tunelab.jobs.pipeline import PipelineDef, StepContext
from tunelab.training.atomic import write_bytes
from tunelab.training.metrics import MetricsLog

logger = logging.getLogger(__name__)

STAGES = ("reward_model", "reinforcement_learning")


def _required(ctx: StepContext, role: str) -> Path:
    path = steps.dataset_path(ctx, role)
    if path is None:
        raise PermanentError(
            "missing_dataset",
            f"an RLHF job needs a {role!r} dataset (has: {', '.join(ctx.job.datasets) or 'none'})",
        )
    return path


def validate(ctx: StepContext) -> dict[str, Any]:
    """Every dataset is read whole; any bad line fails the job with its line numbers."""
    from tunelab.data.preference import validate_preference_file, validate_prompt_file
    from tunelab.models import load_tokenizer, resolve_model

    config = RLHFConfig(**ctx.job.config)
    for role in ("preference", "prompts"):
        _required(ctx, role)
    tokenizer = load_tokenizer(resolve_model(config.base_model).path)
    prompt_kw = dict(
        prompt_sequence_length=config.prompt_sequence_length, instruction=config.instruction
    )

    def pairs(path):
        return validate_preference_file(
            path, tokenizer, target_sequence_length=config.target_sequence_length, **prompt_kw
        )

    def prompts(path):
        return validate_prompt_file(path, tokenizer, **prompt_kw)

    return steps.validate_datasets(
        ctx,
        {
            "preference": ("preference", pairs),
            "prompts": ("prompts", prompts),
            "eval": ("eval", prompts),
        },
    )


def reward_model(ctx: StepContext) -> dict[str, Any]:
    from tunelab.recipes.reward_model import train_reward_model

    config = RLHFConfig(**ctx.job.config)
    with steps.stops_as_job_stops():
        result = ctx.run_recipe(
            train_reward_model,
            config.reward_model(),
            _required(ctx, "preference"),
            ctx.workdir / "reward_model",
            processes=config.processes,
            on_progress=_progress(ctx, config, "reward model", 0.02, 0.25),
            should_stop=ctx.should_stop,
        )
    _sync_metrics(ctx, config)
    return {
        "reward_model": steps.store_dir(ctx, result.bundle_dir, "reward_model"),
        "pairwise_accuracy": result.pairwise_accuracy,
        "eval_pairs": result.eval_pairs,
        "final_train_loss": result.final_train_loss,
        "steps": result.steps,
        "usage": result.usage,
    }


def reinforcement_learning(ctx: StepContext) -> dict[str, Any]:
    from tunelab.jobs import store
    from tunelab.recipes.rlhf import train_policy

    config = RLHFConfig(**ctx.job.config)
    reward = ctx.outputs["reward_model"]
    with steps.stops_as_job_stops():
        result = ctx.run_recipe(
            train_policy,
            config,
            _required(ctx, "prompts"),
            ctx.store.local_path(reward["reward_model"]["uri"]),
            ctx.workdir / "reinforcement_learning",
            processes=config.processes,
            on_progress=_progress(ctx, config, "policy (RLOO)", 0.27, 0.60),
            should_stop=ctx.should_stop,
        )
    _sync_metrics(ctx, config)
    usage = _usage(reward["usage"], result.usage)
    store.update_job(ctx.db, ctx.job.id, usage=usage)  # the worker records usage of "train" only
    return {
        "adapter": steps.store_dir(ctx, result.adapter_dir, "adapter"),
        "checkpoints": steps.store_checkpoints(ctx, result.checkpoints),
        "usage": usage,
        "steps": result.steps,
        "last": result.last,
    }


PER_RUN = ("examples", "checkpoints", "headline_metric")
"""Evaluate-step outputs not copied into the version's metrics."""


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """With evaluation prompts: tuned against base under the reward model (mean reward, win
    rate, answer length), and each kept checkpoint of the policy the same way (``checkpoints``:
    [{step, metrics}], as tunelab.registry.checkpoints lists them; the prompts have no
    reference answers, so the reward model is the judge). Without them, the step is skipped."""
    from tunelab.bundle import read_manifest
    from tunelab.recipes.rlhf import evaluate_policy

    eval_path = steps.dataset_path(ctx, "eval")
    if eval_path is None:
        return {"skipped": "no evaluation prompts"}
    policy = ctx.outputs["reinforcement_learning"]
    reward_dir = ctx.store.local_path(ctx.outputs["reward_model"]["reward_model"]["uri"])
    final_dir = ctx.store.local_path(policy["adapter"]["uri"])
    ctx.report("evaluating: tuned vs base under the reward model", 0.88, None)
    result = evaluate_policy(final_dir, reward_dir, eval_path)

    def weights(folder) -> str | None:
        return read_manifest(folder).get("files", {}).get("adapter_model.safetensors")

    per_checkpoint = []
    for c in policy.get("checkpoints", []):
        ctx.check_stop()
        folder = ctx.store.local_path(c["adapter"]["uri"])
        same = weights(folder) == weights(final_dir)  # the last step: the tuned column's numbers
        ctx.report(f"evaluating checkpoint {c['step']} under the reward model", 0.89, None)
        r = result if same else evaluate_policy(folder, reward_dir, eval_path)
        per_checkpoint.append(
            {
                "step": c["step"],
                "metrics": {
                    "mean_reward": {"value": r["mean_reward_tuned"]},
                    "win_rate": {"value": r["win_rate"]},
                    "mean_length": {"value": r["mean_length_tuned"]},
                },
            }
        )
    return result | {"checkpoints": per_checkpoint, "headline_metric": "mean_reward"}


def register(ctx: StepContext) -> dict[str, Any]:
    job, reward, policy = (
        ctx.job,
        ctx.outputs["reward_model"],
        ctx.outputs["reinforcement_learning"],
    )
    config = RLHFConfig(**job.config)
    rm_version = _registered_reward_model(ctx)
    if rm_version is None:
        rm_version = steps.register_adapter(
            ctx,
            reward["reward_model"],
            {k: reward.get(k) for k in ("pairwise_accuracy", "eval_pairs", "steps")},
            [("job", job.id, "produced"), ("dataset", job.datasets["preference"], "preference")],
            name=reward_model_name(job.tuned_model_name),
            method="reward_model",
            config=config.reward_model().model_dump(mode="json"),
            data_stats={"preference": ctx.outputs["validate"]["reports"]["preference"]},
            # Not the job's "source" version (that is the policy, which the job returns), but
            # made by it: the "produced" edge records that.
            source_job_id=None,
        )
    inputs = [
        ("dataset", job.datasets["prompts"], "prompts"),
        ("model_version", rm_version.id, "reward_model"),
    ]
    if "eval" in job.datasets:
        inputs.append(("dataset", job.datasets["eval"], "eval"))
    evaluation = ctx.outputs.get("evaluate") or {}
    version = steps.register_adapter(
        ctx,
        policy["adapter"],
        {"steps": policy["steps"], "last_step": policy["last"]}
        | {"reward_model_pairwise_accuracy": reward.get("pairwise_accuracy")}
        | {"evaluation": {k: v for k, v in evaluation.items() if k not in PER_RUN}},
        inputs,
    )
    logger.info(
        "registered %s version %d (reward model %s version %d)",
        version.model_name,
        version.version,
        rm_version.model_name,
        rm_version.version,
    )
    return steps.registered(version) | {
        "reward_model_version_id": rm_version.id,
        "reward_model": f"{rm_version.model_name}@{rm_version.version}",
    }


def reward_model_name(name: str) -> str:
    return f"{name[:121]}-reward"  # names are at most 128 characters


# -------------------------------------------------------------------- helpers


def _registered_reward_model(ctx: StepContext):
    """The reward-model version this job registered before (a retried register step), if any."""
    from tunelab.db.schema import LineageEdge, ModelVersion

    with ctx.db.session() as s:
        return s.scalar(
            select(ModelVersion)
            .join(LineageEdge, LineageEdge.dst_id == ModelVersion.id)
            .where(
                LineageEdge.src_kind == "job",
                LineageEdge.src_id == ctx.job.id,
                LineageEdge.dst_kind == "model_version",
                ModelVersion.method == "reward_model",
            )
        )


def _progress(ctx: StepContext, config: RLHFConfig, what: str, start: float, share: float):
    """A stage's progress callback: the job's bar, and both stages' metrics mirrored."""
    return steps.training_progress(ctx, start, share, lambda: _sync_metrics(ctx, config), what)


def _sync_metrics(ctx: StepContext, config: RLHFConfig) -> None:
    """Mirror both stages' metrics into the job as one series: reward-model steps 1..N, then
    policy steps N+1..N+M (each row says its ``stage`` and ``stage_step``)."""
    rows = []
    offset = 0
    for stage, stage_steps in zip(
        STAGES,
        (config.reward_model_train_steps, config.reinforcement_learning_train_steps),
        strict=True,
    ):
        for row in MetricsLog(ctx.workdir / stage / "metrics.jsonl").rows():
            rows.append(
                {**row, "stage": stage, "stage_step": row["step"], "step": row["step"] + offset}
            )
        offset += stage_steps
    combined = ctx.workdir / "metrics.jsonl"
    write_bytes(combined, "".join(json.dumps(r) + "\n" for r in rows).encode())
    ctx.on_metrics(combined)


def _usage(*stages: dict[str, Any]) -> dict[str, Any]:
    total = {
        key: round(sum(s.get(key, 0) for s in stages), 3)
        for key in ("trained_tokens", "train_seconds", "wall_seconds", "cpu_seconds")
    }
    total["trained_tokens"] = int(total["trained_tokens"])
    total["peak_rss_mb"] = max(s.get("peak_rss_mb", 0) for s in stages)
    if "accelerator" in stages[-1]:
        total["accelerator"] = stages[-1]["accelerator"]
    return steps.with_cost(total, billed="trained_tokens")


def summary(outputs: dict[str, dict[str, Any]]) -> list[str]:
    """The reward model's held-out accuracy and the policy against the base on eval prompts."""
    lines = []
    reward = outputs.get("reward_model", {})
    if reward.get("pairwise_accuracy") is not None:
        lines.append(
            f"reward model: pairwise accuracy {reward['pairwise_accuracy']:.1%} on "
            f"{reward['eval_pairs']} held-out pairs "
            f"({outputs.get('register', {}).get('reward_model')})"
        )
    evaluation = outputs.get("evaluate", {})
    if "win_rate" in evaluation:
        lines.append(
            f"held-out prompts ({evaluation['prompts']}): mean reward base "
            f"{evaluation['mean_reward_base']:.3f} -> tuned {evaluation['mean_reward_tuned']:.3f}, "
            f"tuned wins {evaluation['win_rate']:.1%}"
        )
    return lines


PIPELINE = PipelineDef(
    "rlhf",
    (
        ("validate", validate),
        ("reward_model", reward_model),
        ("reinforcement_learning", reinforcement_learning),
        ("evaluate", evaluate),
        ("register", register),
        ("deploy", steps.deploy),
    ),
    weights={
        "validate": 0.02,
        "reward_model": 0.25,
        "reinforcement_learning": 0.60,
        "evaluate": 0.09,
        "register": 0.02,
        "deploy": 0.02,
    },
    summary=summary,
)

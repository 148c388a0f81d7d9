"""The DPO pipeline: validate -> prepare -> train -> evaluate -> register -> deploy.

Datasets by role: ``preference`` (pairs; ``train`` is accepted too, so ``tunelab jobs submit
--method dpo --train pairs.jsonl`` and the REST API's ``train_dataset`` work) and optionally
``validation`` (held-out pairs). With ``init_adapter`` the run starts from that tuned model (a
steps.registered name or name@version, or a bundle folder), which is also its reference, and the new
version's lineage records it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.configs.dpo import DPOConfig
from tunelab.jobs import steps
from tunelab.jobs.errors import PermanentError
from tunelab.jobs.init_adapter import prepare_base_and_init_adapter
from tunelab.jobs.pipeline import StepContext


def _role(ctx: StepContext, role: str) -> str | None:
    """The job's dataset role for ``role``; the preference pairs may also come as ``train``."""
    if role == "preference" and "preference" not in ctx.job.datasets:
        role = "train"
    return role if role in ctx.job.datasets else None


def _dataset_path(ctx: StepContext, role: str) -> Path | None:
    name = _role(ctx, role)
    return None if name is None else steps.dataset_path(ctx, name)


def validate(ctx: StepContext) -> dict[str, Any]:
    """Every dataset is read whole; any bad line fails the job with its line numbers."""
    from tunelab.data.preference import validate_preference_file
    from tunelab.models import load_tokenizer, resolve_model

    config = DPOConfig(**ctx.job.config)
    if _role(ctx, "preference") is None:
        raise PermanentError("missing_dataset", "a DPO job needs a 'preference' dataset")
    tokenizer = load_tokenizer(resolve_model(config.base_model).path)

    def check(path):
        return validate_preference_file(
            path,
            tokenizer,
            prompt_sequence_length=config.prompt_sequence_length,
            target_sequence_length=config.target_sequence_length,
        )

    roles = [r for r in ("preference", "validation") if _role(ctx, r)]
    return steps.validate_datasets(ctx, {role: (_role(ctx, role), check) for role in roles})


def train(ctx: StepContext) -> dict[str, Any]:
    from tunelab.recipes.dpo import train_dpo

    config = DPOConfig(**ctx.job.config)
    result = steps.train_adapter_in_job(ctx, train_dpo, config, _role(ctx, "preference"))
    return steps.kept_adapter_outputs(ctx, result, "preference") | {"evaluation": result.evaluation}


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """With validation pairs: the tuned model's DPO loss, reward accuracy and preferred-minus-
    rejected log-probability margin next to the reference's (from training's last evaluation),
    and ``tunelab eval``'s metrics for base, tuned and every kept checkpoint with the preferred
    answers as references (tunelab.jobs.checkpoint_eval). Without them, skipped."""
    if _role(ctx, "validation") is None:
        return {"skipped": "no validation pairs"}
    from tunelab.jobs.checkpoint_eval import evaluate_with_checkpoints, preferred_answers

    chat = preferred_answers(
        _dataset_path(ctx, "validation"), ctx.workdir / "validation-preferred.jsonl"
    )
    return dict(ctx.outputs["train"]["evaluation"]) | evaluate_with_checkpoints(ctx, chat)


DPO_EVALUATION = (
    "eval_loss",
    "eval_reward_accuracy",
    "eval_reward_margin",
    "eval_logp_margin",
    "eval_reference_logp_margin",
)
"""The evaluate step's DPO figures, recorded in the version's metrics."""


def register(ctx: StepContext) -> dict[str, Any]:
    job, trained = ctx.job, ctx.outputs["train"]
    inputs = [("dataset", job.datasets[_role(ctx, "preference")], "preference")]
    if _role(ctx, "validation"):
        inputs.append(("dataset", job.datasets["validation"], "validation"))
    init_version = ctx.outputs["prepare"].get("init_adapter_version_id")
    if init_version:
        inputs.append(("model_version", init_version, "init_adapter"))
    from tunelab.registry.models import set_evaluation

    metrics = {k: trained.get(k) for k in ("final_train_loss", "steps")}
    evaluated = ctx.outputs.get("evaluate") or {}
    dpo = {k: v for k, v in evaluated.items() if k in DPO_EVALUATION or k == "skipped"}
    version = steps.register_adapter(
        ctx, trained["adapter"], metrics | {"evaluation": dpo or None}, inputs
    )
    if evaluated.get("evaluation"):
        set_evaluation(
            ctx.db, version.id, evaluated["evaluation"] | {"report": evaluated["report"]}
        )
    return steps.registered(version)


def summary(outputs: dict[str, dict[str, Any]]) -> list[str]:
    """The held-out pairs' log-probability margin, reference against tuned."""
    evaluation = outputs.get("evaluate", {})
    if "eval_logp_margin" not in evaluation:
        return []
    return [
        f"held-out pairs: log-prob margin preferred - rejected "
        f"{evaluation['eval_reference_logp_margin']:.2f} (reference) -> "
        f"{evaluation['eval_logp_margin']:.2f} (tuned), reward accuracy "
        f"{evaluation['eval_reward_accuracy']:.1%}"
    ]


PIPELINE = steps.standard_pipeline(
    "dpo", validate, prepare_base_and_init_adapter, train, evaluate, register, summary=summary
)

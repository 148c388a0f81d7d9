"""The supervised-tuning pipeline: validate -> prepare -> train -> evaluate -> register -> deploy."""

from __future__ import annotations

from typing import Any

from tunelab.configs import SFTConfig
from tunelab.data.validation import validate_file
from tunelab.jobs import steps
from tunelab.jobs.init_adapter import prepare_base_and_init_adapter
from tunelab.jobs.pipeline import StepContext, StopRequested


def validate(ctx: StepContext) -> dict[str, Any]:
    """Every dataset is read whole; any bad line fails the job with its line numbers."""
    from tunelab.models import load_tokenizer, resolve_model

    config = SFTConfig(**ctx.job.config)
    tokenizer = load_tokenizer(resolve_model(config.base_model).path)

    def check(path):
        return validate_file(
            path, tokenizer, max_seq_length=config.max_seq_length, epochs=config.epochs or 1
        )

    return steps.validate_datasets(ctx, {role: (role, check) for role in ("train", "validation")})


def train(ctx: StepContext) -> dict[str, Any]:
    from tunelab.recipes.sft import train_sft

    config = SFTConfig(**ctx.job.config)
    result = steps.train_adapter_in_job(ctx, train_sft, config, "train")
    return steps.kept_adapter_outputs(ctx, result, "train") | {
        "best_step": result.best_step,
        "best_eval_loss": result.best_eval_loss,
        "stopped_early": result.stopped_early,
        "resumed_from_step": result.resumed_from_step,  # > 0: this attempt resumed a checkpoint
    }


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """With a validation set, as Vertex does after tuning: the tuned model against its base on
    the validation examples, and every kept checkpoint with it (tunelab.jobs.checkpoint_eval).
    Without one: skipped."""
    if "validation" not in ctx.job.datasets:
        return {"skipped": "no validation dataset"}
    from tunelab.jobs.checkpoint_eval import evaluate_with_checkpoints

    trained = ctx.outputs["train"]
    return evaluate_with_checkpoints(ctx, steps.dataset_path(ctx, "validation")) | {
        "eval_loss": trained.get("best_eval_loss"),
        "best_step": trained.get("best_step"),
    }


def register(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.models import set_evaluation

    trained = ctx.outputs["train"]
    inputs = [("dataset", ctx.job.datasets["train"], "train")]
    if "validation" in ctx.job.datasets:
        inputs.append(("dataset", ctx.job.datasets["validation"], "validation"))
    parent = ctx.outputs["prepare"].get("init_adapter_version_id")
    if parent:  # continued tuning: the version it started from
        inputs.append(("model_version", parent, "init_adapter"))
    metrics = ("best_eval_loss", "best_step", "final_train_loss", "steps", "stopped_early")
    version = steps.register_adapter(
        ctx, trained["adapter"], {k: trained.get(k) for k in metrics}, inputs
    )
    evaluation = ctx.outputs.get("evaluate", {})
    if evaluation.get("evaluation"):
        set_evaluation(
            ctx.db, version.id, evaluation["evaluation"] | {"report": evaluation["report"]}
        )
    return steps.registered(version)


PIPELINE = steps.standard_pipeline(
    "sft", validate, prepare_base_and_init_adapter, train, evaluate, register
)

__all__ = ["StopRequested"]

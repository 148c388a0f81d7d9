"""The supervised-tuning pipeline: validate -> prepare -> train -> evaluate -> register -> deploy."""

from __future__ import annotations

import logging
import time
from typing import Any

from tunelab.bundle import read_manifest
from tunelab.configs import SFTConfig
from tunelab.data.validation import validate_file
from tunelab.jobs import steps
from tunelab.jobs.init_adapter import resolve_init_adapter
from tunelab.jobs.pipeline import StepContext, StopRequested
from tunelab.jobs.progress import rate_eta
from tunelab.jobs.usage import job_usage

logger = logging.getLogger(__name__)

EVAL_MAX_EXAMPLES = 200
"""A validation set larger than this is evaluated on a seeded sample (generation is the slow part)."""


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


def prepare(ctx: StepContext) -> dict[str, Any]:
    """Resolve (and, once, convert) the base model so training starts from a local folder, and
    the adapter a continued run starts from."""
    from tunelab.models import resolve_model

    config = SFTConfig(**ctx.job.config)
    base = resolve_model(config.base_model)
    out = {"base_model": base.ref, "base_model_path": str(base.path), "source": base.source}
    return out | resolve_init_adapter(ctx, config.init_adapter)


def train(ctx: StepContext) -> dict[str, Any]:
    from tunelab.recipes.sft import train_sft

    config = SFTConfig(**ctx.job.config)
    result = steps.train_adapter_in_job(
        ctx,
        train_sft,
        config,
        steps.dataset_path(ctx, "train"),
        steps.dataset_path(ctx, "validation"),
    )
    return {
        "adapter": steps.store_dir(ctx, result.adapter_dir, "adapter"),
        "checkpoints": steps.store_checkpoints(ctx, result.checkpoints),
        "usage": job_usage(result.usage, ctx.outputs["validate"]["reports"]["train"]),
        "best_step": result.best_step,
        "best_eval_loss": result.best_eval_loss,
        "final_train_loss": result.final_train_loss,
        "stopped_early": result.stopped_early,
        "steps": result.steps,
    }


def _weights_sha256(folder) -> str | None:
    return read_manifest(folder).get("files", {}).get("adapter_model.safetensors")


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """With a validation set, as Vertex does after tuning: the tuned model against its base on
    the validation examples (task metrics with bootstrap intervals, loss and perplexity), the
    report stored as an artifact and its summary on the model version. Every kept checkpoint is
    evaluated in the same run, with the same metrics (``checkpoints``: [{step, metrics}]), so a
    user picks a checkpoint on held-out numbers. Without a validation set: skipped."""
    if "validation" not in ctx.job.datasets:
        return {"skipped": "no validation dataset"}
    from tunelab.evaluation.report import save_report
    from tunelab.evaluation.runner import evaluate_models

    trained = ctx.outputs["train"]
    adapter_dir = ctx.store.local_path(trained["adapter"]["uri"])
    final_weights = _weights_sha256(adapter_dir)
    # A checkpoint holding the final adapter's very weights (the best step, or the last) is not
    # generated from twice: it shares the tuned column's numbers.
    checkpoints = [
        (c["step"], ctx.store.local_path(c["adapter"]["uri"]))
        for c in trained.get("checkpoints", [])
    ]
    separate = [(s, d) for s, d in checkpoints if _weights_sha256(d) != final_weights]
    refs = [ctx.job.base_model, str(adapter_dir), *(str(d) for _, d in separate)]

    started = time.monotonic()

    def on_progress(p) -> None:
        ctx.check_stop()
        done = (p.model_index + p.done / max(1, p.total)) / max(1, p.models)
        what = ("base", "tuned")[p.model_index] if p.model_index < 2 else "checkpoint"
        ctx.report(
            f"evaluating {what} model", 0.9 + 0.06 * done, rate_eta(started, done, time.monotonic())
        )

    report = evaluate_models(
        refs,
        steps.dataset_path(ctx, "validation"),
        max_examples=EVAL_MAX_EXAMPLES,
        progress=on_progress,
    )
    folder = ctx.workdir / "evaluation"
    save_report(report, folder)
    summary = report.to_dict()
    by_ref = {m["ref"]: m["metrics"] for m in summary["models"]}
    per_checkpoint = [
        {"step": s, "metrics": by_ref.get(str(d), by_ref[str(adapter_dir)])} for s, d in checkpoints
    ]
    # Name the two columns by role, not by the (long, local) paths they were loaded from; the
    # checkpoints' columns are in per_checkpoint and the stored report.
    summary["models"] = summary["models"][:2]
    summary["models"][0]["ref"], summary["models"][1]["ref"] = "base", "tuned"
    summary["differences"] = {"tuned": next(iter(summary["differences"].values()))}
    summary["baseline"] = "base"
    for row in summary["disagreements"]:  # keyed by local paths: keep base and tuned only
        for key in ("outputs", "scores"):
            row[key] = {
                new: row[key][old]
                for old, new in ((ctx.job.base_model, "base"), (str(adapter_dir), "tuned"))
                if old in row[key]
            }
    return {
        "report": steps.store_dir(ctx, folder, "evaluation"),
        "evaluation": summary,
        "checkpoints": per_checkpoint,
        "headline_metric": summary["headline_metric"],
        "eval_loss": trained.get("best_eval_loss"),
        "best_step": trained.get("best_step"),
    }


def register(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.models import set_evaluation

    trained = ctx.outputs["train"]
    manifest = read_manifest(ctx.store.local_path(trained["adapter"]["uri"]))
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
    logger.info(
        "registered %s version %d (%s)",
        version.model_name,
        version.version,
        manifest.get("method"),
    )
    return steps.registered(version)


steps.register_standard_pipeline("sft", validate, prepare, train, evaluate, register)

__all__ = ["StopRequested"]

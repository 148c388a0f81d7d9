"""The supervised-tuning pipeline: validate -> prepare -> train -> evaluate -> register -> deploy."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tunelab.bundle import read_manifest
from tunelab.configs import SFTConfig
from tunelab.data.validation import DatasetValidationError, validate_file
from tunelab.jobs.errors import PermanentError
from tunelab.jobs.init_adapter import resolve_init_adapter
from tunelab.jobs.pipeline import StepContext, StopRequested, register_pipeline
from tunelab.jobs.progress import rate_eta, training_reporter
from tunelab.jobs.usage import job_usage
from tunelab.registry.datasets import get_dataset

logger = logging.getLogger(__name__)

EVAL_MAX_EXAMPLES = 200
"""A validation set larger than this is evaluated on a seeded sample (generation is the slow part)."""


def _dataset_path(ctx: StepContext, role: str):
    dataset_id = ctx.job.datasets.get(role)
    if dataset_id is None:
        return None
    dataset = get_dataset(ctx.db, dataset_id)
    return ctx.store.local_path(dataset.uri)


def validate(ctx: StepContext) -> dict[str, Any]:
    """Every dataset is read whole; any bad line fails the job with its line numbers."""
    from tunelab.models import load_tokenizer, resolve_model

    config = SFTConfig(**ctx.job.config)
    tokenizer = load_tokenizer(resolve_model(config.base_model).path)
    reports = {}
    for role in ("train", "validation"):
        path = _dataset_path(ctx, role)
        if path is None:
            continue
        report = validate_file(
            path, tokenizer, max_seq_length=config.max_seq_length, epochs=config.epochs or 1
        )
        report.path = f"{role} dataset ({ctx.job.datasets[role]})"
        if not report.ok:
            raise DatasetValidationError(report)
        reports[role] = report.to_dict()
        ctx.check_stop()
    return {"reports": reports}


def prepare(ctx: StepContext) -> dict[str, Any]:
    """Resolve (and, once, convert) the base model so training starts from a local folder, and
    the adapter a continued run starts from."""
    from tunelab.models import resolve_model

    config = SFTConfig(**ctx.job.config)
    base = resolve_model(config.base_model)
    out = {"base_model": base.ref, "base_model_path": str(base.path), "source": base.source}
    return out | resolve_init_adapter(ctx, config.init_adapter)


def train(ctx: StepContext) -> dict[str, Any]:
    from tunelab.recipes.sft import TrainingInterrupted, train_sft

    config = SFTConfig(**ctx.job.config)
    metrics_path = ctx.workdir / "metrics.jsonl"

    on_progress = training_reporter(
        ctx.report,
        start=0.05,
        share=0.85,
        eval_every=(config.eval_every_steps if "validation" in ctx.job.datasets else None),
        on_sync=lambda: ctx.on_metrics(metrics_path),
    )

    init = ctx.outputs["prepare"].get("init_adapter_dir")
    try:
        result = train_sft(
            config,
            _dataset_path(ctx, "train"),
            ctx.workdir,
            _dataset_path(ctx, "validation"),
            Path(init) if init else None,
            on_progress=on_progress,
            should_stop=ctx.should_stop,
        )
    except TrainingInterrupted as exc:
        raise StopRequested from exc
    except ValueError as exc:  # an init adapter that does not fit this run's LoRA
        if init is None:
            raise
        raise PermanentError("invalid_init_adapter", str(exc)) from exc
    ctx.on_metrics(metrics_path)
    stored = ctx.store.put_dir(result.adapter_dir, f"jobs/{ctx.job.id}/adapter")
    usage = job_usage(result.usage, ctx.outputs["validate"]["reports"]["train"])
    return {
        "adapter": {"uri": stored.uri, "sha256": stored.sha256, "size_bytes": stored.size_bytes},
        "usage": usage,
        "best_step": result.best_step,
        "best_eval_loss": result.best_eval_loss,
        "final_train_loss": result.final_train_loss,
        "stopped_early": result.stopped_early,
        "steps": result.steps,
    }


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """With a validation set, as Vertex does after tuning: the tuned model against its base on
    the validation examples (task metrics with bootstrap intervals, loss and perplexity), the
    report stored as an artifact and its summary on the model version. Without one: skipped."""
    if "validation" not in ctx.job.datasets:
        return {"skipped": "no validation dataset"}
    from tunelab.evaluation.report import save_report
    from tunelab.evaluation.runner import evaluate_models

    trained = ctx.outputs["train"]
    adapter_dir = ctx.store.local_path(trained["adapter"]["uri"])

    started = time.monotonic()

    def on_progress(p) -> None:
        ctx.check_stop()
        done = (p.model_index + p.done / max(1, p.total)) / max(1, p.models)
        ctx.report(
            f"evaluating {'base' if p.model_index == 0 else 'tuned'} model",
            0.9 + 0.06 * done,
            rate_eta(started, done, time.monotonic()),
        )

    report = evaluate_models(
        [ctx.job.base_model, str(adapter_dir)],
        _dataset_path(ctx, "validation"),
        max_examples=EVAL_MAX_EXAMPLES,
        progress=on_progress,
    )
    folder = ctx.workdir / "evaluation"
    save_report(report, folder)
    stored = ctx.store.put_dir(folder, f"jobs/{ctx.job.id}/evaluation")
    summary = report.to_dict()
    # Name the two columns by role, not by the (long, local) paths they were loaded from.
    summary["models"][0]["ref"], summary["models"][1]["ref"] = "base", "tuned"
    summary["differences"] = {"tuned": next(iter(summary["differences"].values()))}
    summary["baseline"] = "base"
    return {
        "report": {"uri": stored.uri, "sha256": stored.sha256, "size_bytes": stored.size_bytes},
        "evaluation": summary,
        "eval_loss": trained.get("best_eval_loss"),
        "best_step": trained.get("best_step"),
    }


def register(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.models import register_version, set_evaluation

    trained = ctx.outputs["train"]
    adapter = trained["adapter"]
    manifest = read_manifest(ctx.store.local_path(adapter["uri"]))
    inputs = [("dataset", ctx.job.datasets["train"], "train")]
    if "validation" in ctx.job.datasets:
        inputs.append(("dataset", ctx.job.datasets["validation"], "validation"))
    parent = ctx.outputs["prepare"].get("init_adapter_version_id")
    if parent:  # continued tuning: the version it started from
        inputs.append(("model_version", parent, "init_adapter"))
    version = register_version(
        ctx.db,
        name=ctx.job.tuned_model_name,
        method=ctx.job.method,
        base_model=ctx.job.base_model,
        adapter_uri=adapter["uri"],
        adapter_sha256=adapter["sha256"],
        adapter_size=adapter["size_bytes"],
        config=ctx.job.config,
        data_stats=ctx.outputs["validate"]["reports"],
        metrics={
            k: trained.get(k)
            for k in ("best_eval_loss", "best_step", "final_train_loss", "steps", "stopped_early")
        },
        source_job_id=ctx.job.id,
        inputs=inputs,
    )
    evaluation = ctx.outputs.get("evaluate", {})
    if evaluation.get("evaluation"):
        set_evaluation(
            ctx.db, version.id, evaluation["evaluation"] | {"report": evaluation["report"]}
        )
    logger.info(
        "registered %s version %d (%s)", version.model_name, version.version, manifest.get("method")
    )
    return {"model_version_id": version.id, "name": version.model_name, "version": version.version}


def deploy(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.endpoints import deploy_version

    endpoint = deploy_version(ctx.db, ctx.outputs["register"]["model_version_id"])
    return {"endpoint": endpoint.id}


register_pipeline(
    "sft",
    [
        ("validate", validate),
        ("prepare", prepare),
        ("train", train),
        ("evaluate", evaluate),
        ("register", register),
        ("deploy", deploy),
    ],
    weights={
        "validate": 0.02,
        "prepare": 0.03,
        "train": 0.85,
        "evaluate": 0.06,
        "register": 0.02,
        "deploy": 0.02,
    },
)

__all__ = ["StopRequested"]

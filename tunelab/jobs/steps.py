"""Pieces every method's pipeline shares: dataset paths by role, validating a job's datasets,
running a recipe under the job's stop requests and progress bar, storing a bundle, the usage's
cost, registering the tuned model and deploying it. A pipeline module keeps only what its
method does differently."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.config import get_settings
from tunelab.data.validation import DatasetValidationError
from tunelab.jobs.pipeline import PipelineDef, Step, StepContext, StopRequested

logger = logging.getLogger(__name__)

STANDARD_WEIGHTS = {
    "validate": 0.02,
    "prepare": 0.03,
    "train": 0.85,
    "evaluate": 0.06,
    "register": 0.02,
    "deploy": 0.02,
}
"""Share of the progress bar of each step of validate -> prepare -> train -> evaluate ->
register -> deploy."""


def dataset_path(ctx: StepContext, role: str) -> Path | None:
    """The local file of the job's dataset in ``role``, or None when it has none."""
    from tunelab.registry.datasets import get_dataset

    dataset_id = ctx.job.datasets.get(role)
    if dataset_id is None:
        return None
    return ctx.store.local_path(get_dataset(ctx.db, dataset_id).uri)


def job_device(ctx: StepContext):
    """The torch device the job's ``accelerator``/``devices`` resolve to here (its evaluation
    runs there; training resolves the same in tunelab.training.run)."""
    from tunelab.models.device import resolve_placement

    config = ctx.job.config
    return resolve_placement(config.get("accelerator", "auto"), config.get("devices")).device


def validate_datasets(
    ctx: StepContext, checks: dict[str, tuple[str, Callable[[Path], Any]]]
) -> dict[str, Any]:
    """``checks``: {role: (the job's dataset role holding it, check(path) -> report)}. Every
    dataset present is read whole; any bad line fails the job with its line numbers."""
    reports = {}
    for role, (job_role, check) in checks.items():
        path = dataset_path(ctx, job_role)
        if path is None:
            continue
        report = check(path)
        report.path = f"{role} dataset ({ctx.job.datasets[job_role]})"
        if not report.ok:
            raise DatasetValidationError(report)
        reports[role] = report.to_dict()
        ctx.check_stop()
    return {"reports": reports}


def training_progress(
    ctx: StepContext,
    start: float,
    share: float,
    sync_metrics: Callable[[], None],
    what: str = "",
    eval_every: int | None = None,
) -> Callable[[Any], None]:
    """A recipe's progress callback: the job's progress bar from ``start`` over ``share`` of it,
    never going back during an evaluation, with an ETA that counts the evaluations still to
    come (tunelab.jobs.progress), and the metrics mirrored into the store after finished steps
    at most once a second (bounding DB writes on fast steps)."""
    from tunelab.jobs.progress import training_reporter

    return training_reporter(
        ctx.report,
        start=start,
        share=share,
        eval_every=eval_every,
        label=f"training {what}" if what else "training",
        on_sync=sync_metrics,
    )


@contextmanager
def stops_as_job_stops() -> Iterator[None]:
    """A recipe interrupted by a stop request stops the job step (paused or cancelled)."""
    from tunelab.training.run import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted as exc:
        raise StopRequested from exc


def store_dir(ctx: StepContext, folder: Path, name: str) -> dict[str, Any]:
    """Put a bundle folder in the artifact store under this job: its reference."""
    stored = ctx.store.put_dir(folder, f"jobs/{ctx.job.id}/{name}")
    return {"uri": stored.uri, "sha256": stored.sha256, "size_bytes": stored.size_bytes}


def store_checkpoints(ctx: StepContext, checkpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put a run's kept checkpoints (tunelab.training.kept) in the artifact store under this
    job: {step, epoch, metrics, adapter} each, oldest first; what the checkpoint listings, the
    resolver's ``name@checkpoint-STEP`` and promotion read (tunelab.registry.checkpoints)."""
    return [
        {
            "step": c["step"],
            "epoch": c["epoch"],
            "metrics": c["metrics"],
            "adapter": store_dir(ctx, c["dir"], f"checkpoints/step-{c['step']:08d}"),
        }
        for c in checkpoints
    ]


def kept_adapter_outputs(ctx: StepContext, result: Any, data_role: str) -> dict[str, Any]:
    """The train step's outputs of a LoRA method whose checkpoints are models (SFT, DPO): the
    bundle and the kept checkpoints in the artifact store, the usage (billed on ``data_role``'s
    dataset), the final training loss and the steps."""
    from tunelab.jobs.usage import job_usage

    return {
        "adapter": store_dir(ctx, result.adapter_dir, "adapter"),
        "checkpoints": store_checkpoints(ctx, result.checkpoints),
        "usage": job_usage(result.usage, ctx.outputs["validate"]["reports"][data_role]),
        "final_train_loss": result.final_train_loss,
        "steps": result.steps,
    }


def with_cost(usage: dict[str, Any], billed: str = "billable_tokens") -> dict[str, Any]:
    """``usage`` with its ``estimated_cost`` at the configured price per 1k tokens of ``billed``
    (None without a price)."""
    price = get_settings().price_per_1k_tokens
    cost = round(usage[billed] / 1000 * price, 6) if price is not None else None
    return {**usage, "estimated_cost": cost}


def register_adapter(
    ctx: StepContext,
    adapter: dict[str, Any],
    metrics: dict[str, Any],
    inputs: list[tuple[str, str, str]],
    **overrides: Any,
):
    """Register the job's adapter as the next version of its tuned model, with its lineage
    (``inputs``: (kind, id, relation)); ``overrides`` replace the job's own name, method,
    config, data stats or source."""
    from tunelab.registry.models import register_version

    job = ctx.job
    values = {
        "name": job.tuned_model_name,
        "method": job.method,
        "base_model": job.base_model,
        "config": job.config,
        "data_stats": ctx.outputs["validate"]["reports"],
        "source_job_id": job.id,
    }
    version = register_version(
        ctx.db,
        adapter_uri=adapter["uri"],
        adapter_sha256=adapter["sha256"],
        adapter_size=adapter["size_bytes"],
        metrics=metrics,
        inputs=inputs,
        store=ctx.store,
        **(values | overrides),
    )
    logger.info(
        "registered %s version %d (%s)", version.model_name, version.version, version.method
    )
    return version


def registered(version) -> dict[str, Any]:
    """The register step's output for a model version."""
    return {"model_version_id": version.id, "name": version.model_name, "version": version.version}


def deploy(ctx: StepContext) -> dict[str, Any]:
    """Deploy the registered version, or register it only, as the job's ``deploy`` setting says
    (tunelab.jobs.deploy_policy); the outputs say which and why."""
    from tunelab.jobs.deploy_policy import run_deploy_step

    return run_deploy_step(
        ctx.db,
        ctx.job.id,
        ctx.job.config.get("deploy", "if_better"),
        ctx.outputs["register"]["model_version_id"],
        dict(ctx.job.datasets),
    )


def standard_pipeline(
    method: str,
    validate: Step,
    prepare: Step,
    train: Step,
    evaluate: Step,
    register: Step,
    weights: dict[str, float] | None = None,
    summary: Callable[[dict[str, dict[str, Any]]], list[str]] | None = None,
) -> PipelineDef:
    """validate -> prepare -> train -> evaluate -> register -> deploy for ``method``
    (``weights`` replace some of :data:`STANDARD_WEIGHTS`)."""
    named = dict(validate=validate, prepare=prepare, train=train, evaluate=evaluate)
    return PipelineDef(
        method,
        (*named.items(), ("register", register), ("deploy", deploy)),
        STANDARD_WEIGHTS | (weights or {}),
        summary,
    )


def train_in_job(
    ctx: StepContext,
    recipe: Callable[..., Any],
    *args: Any,
    share: float = 0.85,
    eval_every: int | None = None,
):
    """Run ``recipe(*args)`` in the job's workdir under its stop requests, with its progress on
    the job's bar (from 5% over ``share`` of it; ``eval_every``: the steps between in-training
    evaluations, for the ETA) and its metrics mirrored into the store. On the config's
    (``args[0]``) ``processes`` and ``nodes``, where the worker's executor runs them
    (``ctx.run_recipe``): locally, this process is rank 0, its machine's other ranks are started
    beside it and other machines' join it; on Ray, the cluster places them."""
    metrics_path = ctx.workdir / "metrics.jsonl"

    def sync() -> None:
        ctx.on_metrics(metrics_path)

    with stops_as_job_stops():
        result = ctx.run_recipe(
            recipe,
            *args,
            **getattr(args[0], "parallel_fields", dict)(),  # RFT: one process
            on_progress=training_progress(ctx, 0.05, share, sync, eval_every=eval_every),
            should_stop=ctx.should_stop,
        )
    sync()
    return result


def train_adapter_in_job(
    ctx: StepContext, recipe: Callable[..., Any], config: Any, train_role: str
):
    """Run a LoRA recipe taking (config, train, run_dir, validation, init_adapter_dir) in the
    job, on the datasets of ``train_role`` and ``validation``: from the prepare step's init
    adapter when there is one (continued tuning), evaluating every ``config.eval_every_steps``
    when there is a validation set. An init adapter that cannot fit this run fails the job for
    good."""
    from tunelab.jobs.errors import PermanentError

    train_path, validation_path = dataset_path(ctx, train_role), dataset_path(ctx, "validation")
    init = ctx.outputs["prepare"].get("init_adapter_dir")
    try:
        return train_in_job(
            ctx,
            recipe,
            config,
            train_path,
            ctx.workdir,
            validation_path,
            Path(init) if init else None,
            eval_every=config.eval_every_steps if validation_path is not None else None,
        )
    except ValueError as exc:  # an init adapter that does not fit this run's LoRA
        if init is None:
            raise
        raise PermanentError("invalid_init_adapter", str(exc)) from exc

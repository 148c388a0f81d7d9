"""Submitting a tuning job: the one function the CLI, the REST API and the SDK all call."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tunelab.db import Database
from tunelab.db.schema import TuningJob
from tunelab.jobs import store
from tunelab.jobs.methods import check_dataset_roles, pipeline_for
from tunelab.registry.artifacts import ArtifactStore
from tunelab.registry.continuation import resolve_continuation
from tunelab.registry.datasets import register_dataset
from tunelab.registry.models import add_lineage
from tunelab.registry.names import check_tuned_model_name


def submit_job(
    db: Database,
    artifacts: ArtifactStore,
    *,
    config: BaseModel,
    name: str,
    datasets: dict[str, Path | str | None],
    display_name: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[TuningJob, bool]:
    """Register the datasets (paths, or ids of datasets already registered) and queue the job.

    ``config`` is the method's typed config (its ``method`` field picks the pipeline).
    Returns (job, created); with an idempotency key already used, the existing job. Raises
    :class:`tunelab.registry.names.InvalidModelName` for a name no tuned model may take,
    ContinuationError when ``base_model`` names a tuned model the job cannot start from, and
    :class:`tunelab.models.device.AcceleratorUnavailable` (its ``field`` says which) when the
    config asks for CUDA devices this machine does not have, and
    :class:`tunelab.jobs.methods.DatasetRoleError` for a dataset under a role the method does
    not take, or a required role without one.
    """
    check_tuned_model_name(name)
    check_dataset_roles(
        config.method,  # type: ignore[attr-defined]
        [role for role, ref in datasets.items() if ref is not None],
    )
    check_accelerator(config)
    if idempotency_key is not None:
        existing = store.find_by_idempotency_key(db, idempotency_key)
        if existing is not None:
            return existing, False
    config = resolve_continuation(db, config)  # --base NAME@V of a tuned model
    method = config.method  # type: ignore[attr-defined]
    pipeline = pipeline_for(method)
    ids: dict[str, str | None] = {}
    for role, ref in datasets.items():
        if ref is None:
            ids[role] = None
        elif isinstance(ref, Path):
            ids[role] = register_dataset(db, artifacts, ref).id
        else:
            ids[role] = ref
    job, created = store.create_job(
        db,
        display_name=display_name or name,
        method=method,
        base_model=config.base_model,  # type: ignore[attr-defined]
        config=config.model_dump(mode="json"),
        datasets=ids,
        steps=pipeline.step_names,
        tuned_model_name=name,
        idempotency_key=idempotency_key,
    )
    if created:
        for role, dataset_id in ids.items():
            if dataset_id is not None:
                add_lineage(db, ("dataset", dataset_id), ("job", job.id), role)
    return job, created


def check_accelerator(config: BaseModel) -> None:
    """Refuse a job whose ``accelerator``/``devices`` this machine cannot give, before it is
    queued. ``auto`` and ``cpu`` without devices always can: torch is not even imported then."""
    if getattr(config, "accelerator", "auto") == "cuda" or getattr(config, "devices", None):
        from tunelab.models.device import check_compute

        check_compute(config)

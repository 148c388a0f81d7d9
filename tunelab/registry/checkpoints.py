"""A tuned model's kept checkpoints as models: listed, resolved and promoted to a version.

A job keeps some checkpoints (``keep_checkpoints``: the last N and the best by validation loss,
tunelab.training.kept); its train step stores each as an adapter bundle in the artifact store,
and its evaluate step evaluates each with ``tunelab eval``'s metrics. This module reads them
back from the job's step outputs, the one place every face reads:

- the checkpoints of a model version (of the job that made it): REST, CLI, SDK, the Studio and
  OpenAI's ``GET /v1/fine_tuning/jobs/{id}/checkpoints``;
- the adapter of ``name@checkpoint-STEP`` for the resolver (tunelab.registry.resolve);
- :func:`promote`: a checkpoint becomes the next version of its model, with lineage to the job
  and to the version it was a checkpoint of.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from tunelab.db import Database
from tunelab.db.schema import ModelVersion, PipelineStep, TuningJob
from tunelab.registry.artifacts import ArtifactStore

CHECKPOINT_REF = re.compile(r"^(?P<name>[^@]+)@checkpoint-(?P<step>\d{1,9})$")
"""``name@checkpoint-STEP``: a kept checkpoint of the job that made ``name``'s latest version."""

PROMOTED = "promoted_checkpoint"
"""Lineage relation from the job (and from the version it was a checkpoint of) to a version
promoted from one of its checkpoints."""


class CheckpointNotFound(LookupError):
    """No kept checkpoint at that step; the message names the steps there are."""


@dataclass
class Checkpoint:
    job_id: str
    step: int
    epoch: float
    metrics: dict[str, Any]
    """Training metrics at the step: train_loss, train_accuracy, eval_loss, eval_accuracy and
    whatever else the method logged there."""
    adapter: dict[str, Any]
    """{uri, sha256, size_bytes} of its adapter bundle in the artifact store."""
    evaluation: dict[str, Any] | None = None
    """``tunelab eval``'s metrics on the validation set ({metric: {value, low, high}}), when
    the job evaluated it."""
    headline_metric: str | None = None
    """The evaluation's headline metric (the task's first: macro_f1, exact_match, rouge_l)."""
    is_final: bool = False
    """Its weights are the adapter the job registered (the best step, or the last)."""
    promoted: list[str] = field(default_factory=list)
    """``name@version`` of the versions promoted from it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "step": self.step,
            "epoch": self.epoch,
            "metrics": self.metrics,
            "evaluation": self.evaluation,
            "headline_metric": self.headline_metric,
            "is_final": self.is_final,
            "adapter_sha256": self.adapter.get("sha256"),
            "promoted_to": self.promoted,
        }


def job_checkpoints(db: Database, job_id: str) -> list[Checkpoint]:
    """The kept checkpoints of a job, oldest first (none until its train step succeeded)."""
    with db.session() as s:
        outputs = {
            step.name: step.outputs or {}
            for step in s.scalars(select(PipelineStep).where(PipelineStep.job_id == job_id))
        }
        job = s.get(TuningJob, job_id)
        name = job.tuned_model_name if job is not None else None
        promoted = list(s.scalars(select(ModelVersion).where(ModelVersion.model_name == name)))
    # The step that trained the adapter (``train``; RLHF's ``reinforcement_learning``) lists
    # the checkpoints with their adapters; the evaluate step lists their evaluations.
    trained = next(
        (
            out
            for out in outputs.values()
            if any("adapter" in c for c in out.get("checkpoints", []))
        ),
        {},
    )
    evaluation = outputs.get("evaluate", {})
    evaluated = {c["step"]: c["metrics"] for c in evaluation.get("checkpoints", [])}
    final_step = trained.get("best_step") or trained.get("steps")
    by_step: dict[int, list[str]] = {}
    for v in promoted:
        origin = (v.metrics or {}).get("checkpoint") or {}
        if origin.get("job_id") == job_id:
            by_step.setdefault(origin.get("step"), []).append(f"{v.model_name}@{v.version}")
    return [
        Checkpoint(
            job_id=job_id,
            step=c["step"],
            epoch=c["epoch"],
            metrics=c["metrics"],
            adapter=c["adapter"],
            evaluation=evaluated.get(c["step"]),
            headline_metric=evaluation.get("headline_metric") if c["step"] in evaluated else None,
            is_final=c["step"] == final_step,
            promoted=by_step.get(c["step"], []),
        )
        for c in trained.get("checkpoints", [])
    ]


def source_job(version: ModelVersion) -> str | None:
    """The job whose checkpoints a version lists: the job that made it, or, for a promoted
    checkpoint, the job it came from."""
    origin = (version.metrics or {}).get("checkpoint") or {}
    return version.source_job_id or origin.get("job_id")


def version_checkpoints(db: Database, version: ModelVersion) -> list[Checkpoint]:
    job_id = source_job(version)
    return job_checkpoints(db, job_id) if job_id else []


def find(db: Database, version: ModelVersion, step: int) -> Checkpoint:
    """The kept checkpoint at ``step`` of the job that made ``version``."""
    found = version_checkpoints(db, version)
    for c in found:
        if c.step == step:
            return c
    kept = [c.step for c in found]
    ref = f"{version.model_name}@{version.version}"
    raise CheckpointNotFound(
        f"{ref} has no kept checkpoint at step {step} (kept: {kept})"
        if kept
        else f"{ref} has no kept checkpoints (its job kept none, or predates them)"
    )


def promote(
    db: Database, version: ModelVersion, step: int, store: ArtifactStore | None = None
) -> ModelVersion:
    """Register the checkpoint at ``step`` of ``version``'s job as the next version of the same
    model, with its metrics and evaluation; lineage: job -> new version and version -> new
    version, both ``promoted_checkpoint``, plus the datasets the job trained on. Promoting the
    same checkpoint again returns the version it made. ``store`` holds the checkpoint (its vLLM
    verdict is stored with the new version)."""
    from tunelab.registry.models import get_versions, register_version, upstream

    checkpoint = find(db, version, step)
    job_id = checkpoint.job_id
    for existing in get_versions(db, version.model_name):
        origin = (existing.metrics or {}).get("checkpoint") or {}
        if origin.get("job_id") == job_id and origin.get("step") == step:
            return existing
    parent = _job_version(db, version, job_id)
    inputs = [
        (e.src_kind, e.src_id, e.relation)
        for e in upstream(db, "model_version", parent.id)
        if e.src_kind == "dataset" and e.dst_id == parent.id
    ]
    inputs += [("job", job_id, PROMOTED), ("model_version", parent.id, PROMOTED)]
    promoted = register_version(
        db,
        name=version.model_name,
        method=parent.method,
        base_model=parent.base_model,
        adapter_uri=checkpoint.adapter["uri"],
        adapter_sha256=checkpoint.adapter["sha256"],
        adapter_size=checkpoint.adapter["size_bytes"],
        config=parent.config,
        data_stats=parent.data_stats,
        metrics={
            **checkpoint.metrics,
            "steps": step,
            "epoch": checkpoint.epoch,
            "checkpoint": {
                "job_id": job_id,
                "step": step,
                "of_version": parent.version,
                "evaluation": checkpoint.evaluation,
            },
        },
        # Not the job's own version (register_version is idempotent per source job): the job
        # is linked by lineage and by metrics["checkpoint"].
        source_job_id=None,
        inputs=inputs,
        store=store,
    )
    return promoted


def _job_version(db: Database, version: ModelVersion, job_id: str) -> ModelVersion:
    """The version the job itself registered (``version`` may be a promoted one)."""
    if version.source_job_id == job_id:
        return version
    with db.session() as s:
        made = s.scalar(select(ModelVersion).where(ModelVersion.source_job_id == job_id))
    return made or version


def checkpoint_ref(name: str, step: int) -> str:
    return f"{name}@checkpoint-{step}"


def listing(db: Database, job_id: str) -> dict[str, Any]:
    """A job's kept checkpoints as every face shows them: each with ``model``, the reference
    that serves it (``name@checkpoint-STEP``, while the model's latest version lists this job's
    checkpoints; else None: promote it to serve it)."""
    from tunelab.registry.models import ModelNotRegistered, get_version

    with db.session() as s:
        job = s.get(TuningJob, job_id)
        name = job.tuned_model_name if job is not None else None
    servable = False
    if name:
        try:
            servable = source_job(get_version(db, name)) == job_id
        except (ModelNotRegistered, ValueError):
            servable = False
    return {
        "job_id": job_id,
        "tuned_model_name": name,
        "checkpoints": [
            c.to_dict() | {"model": checkpoint_ref(name, c.step) if servable else None}
            for c in job_checkpoints(db, job_id)
        ],
    }

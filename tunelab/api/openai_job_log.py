"""A fine-tuning job's log and checkpoints as OpenAI's ``fine_tuning.job.event`` and
``fine_tuning.job.checkpoint`` pages: the job's events and metrics rows, and its kept
checkpoints (or, when it kept none, the model version it registered)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tunelab.api.openai_views import (
    REQUEST_EVENT,
    fine_tuned_model_of,
    page,
    requests_of,
    seconds,
    unix,
)
from tunelab.db import Database
from tunelab.db.schema import JobEvent, JobMetric, PipelineStep, TuningJob, utcnow
from tunelab.jobs.states import JobState

S = JobState


# ---------------------------------------------------------------------------------- events


def _event_level(event: JobEvent) -> str:
    if event.kind == "state" and (event.data or {}).get("to") == S.FAILED:
        return "error"
    if event.message.startswith("transient error"):
        return "warn"
    return "info"


def _metric_message(row: dict[str, Any]) -> str:
    parts = [f"Step {row.get('step')}:"]
    for key, label in (("train_loss", "training loss"), ("eval_loss", "validation loss")):
        if isinstance(row.get(key), int | float):
            parts.append(f"{label}={row[key]:.4f}")
    return " ".join(parts)


def events_page(db: Database, job: TuningJob, after: str | None, limit: int) -> dict[str, Any]:
    """The job's log (state changes, claims, pause and cancel requests) and its training
    metrics (one ``metrics`` event per logged row), newest first.

    Metric rows carry a step, not a time: each is given a time interpolated by step over the
    train step's span, which keeps them in order among the log's events."""
    with db.session() as s:
        logged = list(
            s.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job.id, JobEvent.kind != REQUEST_EVENT)
                .order_by(JobEvent.id)
            )
        )
        metrics = list(
            s.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.id))
        )
        train = s.scalar(
            select(PipelineStep).where(PipelineStep.job_id == job.id, PipelineStep.name == "train")
        )
    items: list[tuple[float, int, dict[str, Any]]] = []
    for e in logged:
        items.append(
            (
                seconds(e.time),
                e.id,
                {
                    "id": f"ftevent-{e.id}",
                    "object": "fine_tuning.job.event",
                    "created_at": unix(e.time),
                    "level": _event_level(e),
                    "message": e.message,
                    "data": e.data or {},
                    "type": "message",
                },
            )
        )
    if metrics:
        start = seconds(train.started_at if train and train.started_at else job.created_at)
        end = seconds(train.ended_at if train and train.ended_at else utcnow())
        last_step = max(m.step for m in metrics) or 1
        for m in metrics:
            moment = start + (end - start) * m.step / last_step
            data = {
                "step": m.step,
                "train_loss": m.data.get("train_loss"),
                "valid_loss": m.data.get("eval_loss"),
                "train_mean_token_accuracy": m.data.get("train_accuracy"),
                "valid_mean_token_accuracy": m.data.get("eval_accuracy"),
            }
            items.append(
                (
                    moment,
                    m.id,
                    {
                        "id": f"ftevent-m{m.id}",
                        "object": "fine_tuning.job.event",
                        "created_at": int(moment),
                        "level": "info",
                        "message": _metric_message(m.data),
                        "data": {k: v for k, v in data.items() if v is not None},
                        "type": "metrics",
                    },
                )
            )
    ordered = [item for _, _, item in sorted(items, key=lambda t: (t[0], t[1]), reverse=True)]
    if after:
        ids = [e["id"] for e in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    return page(ordered[:limit], len(ordered) > limit)


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_metrics(step: int, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": float(step),
        "train_loss": m.get("train_loss"),
        "train_mean_token_accuracy": m.get("train_accuracy"),
        "valid_loss": m.get("eval_loss"),
        "valid_mean_token_accuracy": m.get("eval_accuracy"),
        # TuneLab evaluates on the whole validation set, so the "full" figures are the same.
        "full_valid_loss": m.get("eval_loss"),
        "full_valid_mean_token_accuracy": m.get("eval_accuracy"),
    }


def checkpoints_page(db: Database, job: TuningJob, after: str | None, limit: int) -> dict:
    """The job's kept checkpoints (tunelab.registry.checkpoints, the data TuneLab's own
    listings read), newest first, each callable as its ``fine_tuned_model_checkpoint``
    (``name@checkpoint-STEP``). A job that kept none lists the adapter it registered (its best
    step on the validation set when it had one, else its last), named as its fine-tuned model."""
    from tunelab.registry.checkpoints import listing

    if job.state != S.SUCCEEDED or not job.tuned_model_version:
        return page([], False)
    kept = listing(db, job.id)["checkpoints"]
    if not kept:
        return _registered_checkpoint_page(db, job, after, limit)
    with db.session() as s:
        created = s.scalar(
            select(PipelineStep.ended_at).where(
                PipelineStep.job_id == job.id, PipelineStep.name == "train"
            )
        )
    request = requests_of(db, [job.id]).get(job.id)
    final_name = fine_tuned_model_of(job, request)
    items = [
        {
            "id": f"ftckpt-{job.id}-{c['step']}",
            "object": "fine_tuning.job.checkpoint",
            "created_at": unix(created or job.ended_at or job.created_at),
            "fine_tuned_model_checkpoint": c["model"] or final_name,
            "fine_tuning_job_id": job.id,
            "metrics": _checkpoint_metrics(c["step"], c["metrics"]),
            "step_number": c["step"],
        }
        for c in reversed(kept)
    ]
    if after:
        ids = [c["id"] for c in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return page(items[:limit], len(items) > limit)


def _registered_checkpoint_page(db: Database, job: TuningJob, after: str | None, limit: int):
    from tunelab.registry.models import ModelNotRegistered, get_version

    try:
        version = get_version(db, job.tuned_model_name, job.tuned_model_version)
    except ModelNotRegistered:  # deleted from the registry since
        return page([], False)
    recorded = version.metrics or {}
    step = recorded.get("best_step") or recorded.get("steps") or 0
    with db.session() as s:
        rows = [
            m.data
            for m in s.scalars(
                select(JobMetric).where(JobMetric.job_id == job.id, JobMetric.step == step)
            )
        ]
    merged: dict[str, Any] = {}
    for row in rows:
        merged.update({k: v for k, v in row.items() if v is not None})
    request = requests_of(db, [job.id]).get(job.id)
    checkpoint = {
        "id": f"ftckpt-{version.id}",
        "object": "fine_tuning.job.checkpoint",
        "created_at": unix(version.created_at),
        "fine_tuned_model_checkpoint": fine_tuned_model_of(job, request),
        "fine_tuning_job_id": job.id,
        "metrics": _checkpoint_metrics(step, merged),
        "step_number": int(step),
    }
    data = [checkpoint] if after != checkpoint["id"] else []
    return page(data[:limit], False)

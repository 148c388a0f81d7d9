"""TuneLab's datasets and jobs as OpenAI's ``file`` and ``fine_tuning.job`` objects, and the
cursor pages they are listed in (``after`` = the last id of the previous page, ``has_more``).
A job's events and checkpoints are in :mod:`tunelab.api.openai_job_log`.

Only supervised and DPO jobs are fine-tuning jobs here (OpenAI has no RLHF or embedding
tuning); jobs submitted through TuneLab's own API show too, their model named ``name@version``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select

from tunelab.db import Database
from tunelab.db.schema import Dataset, JobEvent, PipelineStep, TuningJob
from tunelab.jobs.states import JobState

S = JobState
FT_METHODS = ("sft", "dpo")
METHOD_TYPE = {"sft": "supervised", "dpo": "dpo"}
REQUEST_EVENT = "openai_request"
"""Kind of the job event that keeps the OpenAI request's names (suffix, metadata, the model as
asked, the ``ft:`` name): the job's log is where a job records how it was asked for."""
DEFAULT_EPOCHS = {"sft": 3, "dpo": 1}


def seconds(moment: datetime) -> float:
    """The database's naive-UTC time in Unix seconds (a naive datetime's own ``timestamp()``
    would take it as local time)."""
    return moment.replace(tzinfo=UTC).timestamp()


def unix(moment: datetime | None) -> int | None:
    """The database's time as OpenAI's Unix seconds."""
    return int(seconds(moment)) if moment is not None else None


# ------------------------------------------------------------------------------------ files


def file_object(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "object": "file",
        "bytes": dataset.size_bytes,
        "created_at": unix(dataset.created_at),
        "filename": dataset.filename,
        "purpose": "fine-tune",
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def files_page(db: Database, after: str | None, limit: int, order: str) -> dict[str, Any]:
    newest_first = order == "desc"
    if newest_first:
        key = (Dataset.created_at.desc(), Dataset.id.desc())
    else:
        key = (Dataset.created_at.asc(), Dataset.id.asc())
    with db.session() as s:
        query = select(Dataset).order_by(*key).limit(limit + 1)
        if after:
            anchor = s.get(Dataset, after)
            if anchor is not None:
                query = query.where(_past(Dataset, anchor, newest_first))
        rows = list(s.scalars(query))
    return page([file_object(d) for d in rows[:limit]], len(rows) > limit)


def _past(table, anchor, newest_first: bool):
    """Rows after ``anchor`` in (created_at, id) order, either way."""
    if newest_first:
        return or_(
            table.created_at < anchor.created_at,
            and_(table.created_at == anchor.created_at, table.id < anchor.id),
        )
    return or_(
        table.created_at > anchor.created_at,
        and_(table.created_at == anchor.created_at, table.id > anchor.id),
    )


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


# ------------------------------------------------------------------------------------ jobs


def requests_of(db: Database, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not job_ids:
        return {}
    with db.session() as s:
        rows = s.scalars(
            select(JobEvent).where(JobEvent.job_id.in_(job_ids), JobEvent.kind == REQUEST_EVENT)
        )
        return {e.job_id: e.data or {} for e in rows}


def steps_by_job(db: Database, job_ids: list[str]) -> dict[str, dict[str, PipelineStep]]:
    out: dict[str, dict[str, PipelineStep]] = {j: {} for j in job_ids}
    with db.session() as s:
        for step in s.scalars(select(PipelineStep).where(PipelineStep.job_id.in_(job_ids))):
            out[step.job_id][step.name] = step
    return out


def status_of(job: TuningJob, steps: dict[str, PipelineStep]) -> str:
    """OpenAI's status for a TuneLab state. A claimed job is ``validating_files`` until its
    validate step is done, then ``running``; a cancel that its worker has not yet carried out
    (CANCELLING, which can only end the job) already reads ``cancelled``, as OpenAI reports it."""
    state = S(job.state)
    if state in (S.PENDING, S.RUNNING):
        validate = steps.get("validate")
        validated = validate is not None and validate.state in ("SUCCEEDED", "SKIPPED")
        return "running" if validated else "validating_files"
    return {
        S.QUEUED: "queued",
        S.PAUSED: "paused",
        S.SUCCEEDED: "succeeded",
        S.FAILED: "failed",
        S.CANCELLING: "cancelled",
        S.CANCELLED: "cancelled",
    }[state]


def error_of(job: TuningJob) -> dict[str, Any] | None:
    """The job's error as OpenAI's ``{code, message, param}``; a bad dataset names the file
    parameter and the first bad lines with their numbers."""
    if not job.error:
        return None
    code, message = job.error.get("code") or "internal", job.error.get("message", "")
    details = job.error.get("details") or {}
    param = None
    if code == "invalid_dataset":
        role = "validation" if str(details.get("file", "")).startswith("validation") else "train"
        param = "validation_file" if role == "validation" else "training_file"
        file_id = job.datasets.get(role) or job.datasets.get("preference", "")
        errors = details.get("errors") or []
        shown = "; ".join(
            f"line {e.get('line')}: "
            + ": ".join(p for p in (e.get("field"), e.get("message")) if p)
            for e in errors[:5]
        )
        count = details.get("error_count", len(errors))
        more = f" (and {count - 5} more)" if count > 5 else ""
        message = f"{param} {file_id} has {count} invalid line(s): {shown}{more}"
        code = f"invalid_{param}"
    elif code in ("model_not_found", "unsafe_model"):
        param = "model"
    elif code == "missing_dataset":
        param = "training_file"
    return {"code": code, "message": message, "param": param}


def hyperparameters_of(job: TuningJob) -> dict[str, Any]:
    config = job.config
    out = {
        "n_epochs": config.get("epochs") or DEFAULT_EPOCHS.get(job.method, 1),
        "batch_size": config.get("batch_size"),
        "learning_rate_multiplier": config.get("learning_rate_multiplier"),
    }
    if job.method == "dpo":
        out["beta"] = config.get("beta")
    return out


def fine_tuned_model_of(job: TuningJob, request: dict[str, Any] | None) -> str | None:
    if job.state != S.SUCCEEDED or not job.tuned_model_version:
        return None
    if request and request.get("fine_tuned_model"):
        return request["fine_tuned_model"]
    return f"{job.tuned_model_name}@{job.tuned_model_version}"


def job_object(
    job: TuningJob, request: dict[str, Any] | None, steps: dict[str, PipelineStep]
) -> dict[str, Any]:
    request = request or {}
    status = status_of(job, steps)
    hyper = hyperparameters_of(job)
    method_type = METHOD_TYPE[job.method]
    usage = job.usage or {}
    running = status in ("validating_files", "running")
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": unix(job.created_at),
        # ended_at is set on reaching a terminal state (CANCELLING reads "cancelled" before).
        "finished_at": unix(job.ended_at),
        "error": error_of(job),
        "fine_tuned_model": fine_tuned_model_of(job, request),
        "hyperparameters": {k: v for k, v in hyper.items() if k != "beta"},
        "model": request.get("model") or job.base_model,
        "organization_id": "tunelab",
        "result_files": [],
        "seed": job.config.get("seed"),
        "status": status,
        "trained_tokens": usage.get("billable_tokens") if job.state == S.SUCCEEDED else None,
        "training_file": job.datasets.get("train") or job.datasets.get("preference"),
        "validation_file": job.datasets.get("validation"),
        "estimated_finish": int(time.time() + job.eta_seconds)
        if running and job.eta_seconds
        else None,
        "integrations": [],
        "metadata": request.get("metadata"),
        "method": {"type": method_type, method_type: {"hyperparameters": hyper}},
        "user_provided_suffix": request.get("suffix"),
    }


def job_objects(db: Database, jobs: list[TuningJob]) -> list[dict[str, Any]]:
    ids = [j.id for j in jobs]
    requests, steps = requests_of(db, ids), steps_by_job(db, ids)
    return [job_object(j, requests.get(j.id), steps.get(j.id, {})) for j in jobs]


def get_ft_job(db: Database, job_id: str) -> TuningJob | None:
    with db.session() as s:
        job = s.get(TuningJob, job_id)
    return job if job is not None and job.method in FT_METHODS else None


def jobs_page(
    db: Database, after: str | None, limit: int, metadata: dict[str, str] | None
) -> dict[str, Any]:
    """Newest first. With a metadata filter, only jobs whose metadata has every pair given."""
    found: list[TuningJob] = []
    anchor = get_ft_job(db, after) if after else None
    batch = max(limit + 1, 100)
    while len(found) <= limit:
        with db.session() as s:
            query = (
                select(TuningJob)
                .where(TuningJob.method.in_(FT_METHODS))
                .order_by(TuningJob.created_at.desc(), TuningJob.id.desc())
                .limit(batch)
            )
            if anchor is not None:
                query = query.where(_past(TuningJob, anchor, newest_first=True))
            rows = list(s.scalars(query))
        if metadata:
            requests = requests_of(db, [j.id for j in rows])
            found += [
                j
                for j in rows
                if all(
                    (requests.get(j.id, {}).get("metadata") or {}).get(k) == v
                    for k, v in metadata.items()
                )
            ]
        else:
            found += rows
        if len(rows) < batch:
            break
        anchor = rows[-1]
    return page(job_objects(db, found[:limit]), len(found) > limit)

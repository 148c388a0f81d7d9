"""The job store: creating tuning jobs, moving them between states, and handing them to workers.

Every state change goes through :func:`transition`, which refuses illegal ones. Workers claim
jobs with a compare-and-set ``UPDATE … WHERE state = <seen> AND <lease free>``: whichever worker's
update matches first gets the job, on SQLite and PostgreSQL alike, so two workers never run the
same job. A claim is a lease: the worker renews it by heartbeat, and a job whose lease has
expired (its worker died) is claimed again by the next worker, which resumes from checkpoint.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from tunelab.db import Database
from tunelab.db.schema import JobEvent, JobMetric, PipelineStep, TuningJob, utcnow
from tunelab.jobs.states import ACTIVE, IllegalTransition, JobState, check_transition

S = JobState


class JobNotFound(LookupError):
    pass


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:16]


def create_job(
    db: Database,
    *,
    display_name: str,
    method: str,
    base_model: str,
    config: dict[str, Any],
    datasets: dict[str, str | None],
    steps: list[str],
    tuned_model_name: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[TuningJob, bool]:
    """Create a QUEUED job with its pipeline steps; returns (job, created).

    With an idempotency key, a second call with the same key returns the first job unchanged.
    """
    if not 1 <= len(display_name) <= 128:
        raise ValueError("display_name must be 1 to 128 characters")
    if idempotency_key is not None:
        existing = find_by_idempotency_key(db, idempotency_key)
        if existing is not None:
            return existing, False
    job = TuningJob(
        id=new_job_id(),
        display_name=display_name,
        method=method,
        base_model=base_model,
        config=config,
        datasets={k: v for k, v in datasets.items() if v is not None},
        state=S.QUEUED,
        tuned_model_name=tuned_model_name or display_name,
        idempotency_key=idempotency_key,
    )
    try:
        with db.session() as s:
            s.add(job)
            s.flush()
            for position, name in enumerate(steps):
                s.add(PipelineStep(job_id=job.id, position=position, name=name, state="PENDING"))
            s.add(JobEvent(job_id=job.id, kind="created", message=f"{method} job created"))
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = find_by_idempotency_key(db, idempotency_key)  # a concurrent twin won the race
        if existing is None:
            raise
        return existing, False
    return job, True


def find_by_idempotency_key(db: Database, key: str) -> TuningJob | None:
    with db.session() as s:
        return s.scalar(select(TuningJob).where(TuningJob.idempotency_key == key))


def get_job(db: Database, job_id: str) -> TuningJob:
    with db.session() as s:
        job = s.get(TuningJob, job_id)
    if job is None:
        raise JobNotFound(f"no tuning job {job_id!r}")
    return job


def list_jobs(db: Database, state: str | None = None, limit: int = 100) -> list[TuningJob]:
    with db.session() as s:
        query = select(TuningJob).order_by(TuningJob.created_at.desc()).limit(limit)
        if state:
            query = query.where(TuningJob.state == state)
        return list(s.scalars(query))


def steps_of(db: Database, job_id: str) -> list[PipelineStep]:
    with db.session() as s:
        return list(
            s.scalars(
                select(PipelineStep)
                .where(PipelineStep.job_id == job_id)
                .order_by(PipelineStep.position)
            )
        )


def events_of(db: Database, job_id: str, after_id: int = 0) -> list[JobEvent]:
    with db.session() as s:
        return list(
            s.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
                .order_by(JobEvent.id)
            )
        )


def metrics_of(db: Database, job_id: str) -> list[dict[str, Any]]:
    with db.session() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [r.data for r in rows]


def transition(
    db: Database,
    job_id: str,
    target: JobState,
    *,
    by_worker: str | None = None,
    release: bool = False,
    message: str | None = None,
    **fields: Any,
) -> TuningJob:
    """Move a job to ``target`` if that is legal from its current state; set ``fields`` too.

    With ``by_worker``, the change only happens while that worker still holds the job: a worker
    that lost its lease cannot overwrite what the job's new worker did. ``release`` gives up the
    lease (the job goes back to no worker).
    """
    with db.session() as s:
        job = s.get(TuningJob, job_id, with_for_update=not db.is_sqlite)
        if job is None:
            raise JobNotFound(f"no tuning job {job_id!r}")
        if by_worker is not None and job.worker_id != by_worker:
            raise LeaseLost(f"job {job_id} is no longer held by worker {by_worker}")
        check_transition(job_id, job.state, target)
        previous = job.state
        job.state = target
        for key, value in fields.items():
            setattr(job, key, value)
        if target in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
            job.ended_at = utcnow()
            release = True
            job.requested_action = None
        if release:
            job.worker_id, job.lease_expires_at = None, None
        s.add(
            JobEvent(
                job_id=job_id,
                kind="state",
                message=message or f"{previous} -> {target}",
                data={"from": previous, "to": str(target)},
            )
        )
    return job


class LeaseLost(RuntimeError):
    """The worker's lease on a job expired and another worker may have claimed it."""


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _holder_is_dead(worker_id: str | None) -> bool:
    """A lease held by a process of this host that no longer exists can be taken at once,
    without waiting for it to expire (e.g. a CLI run killed with kill -9 and started again)."""
    if not worker_id:
        return False
    host, _, rest = worker_id.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim(
    db: Database, worker_id: str, lease_seconds: float, job_id: str | None = None
) -> TuningJob | None:
    """Atomically take the oldest claimable job (or ``job_id``): QUEUED, or held under an expired
    lease. Returns the job, now PENDING and leased to ``worker_id``, or None."""
    now = utcnow()
    with db.session() as s:
        query = (
            select(TuningJob.id, TuningJob.state, TuningJob.worker_id, TuningJob.lease_expires_at)
            .where(
                or_(
                    TuningJob.state == S.QUEUED,
                    TuningJob.state.in_([str(x) for x in ACTIVE]),
                )
            )
            .order_by(TuningJob.created_at)
            .limit(50)
        )
        if job_id is not None:
            query = query.where(TuningJob.id == job_id)
        candidates = s.execute(query).all()
    for cid, state, holder, expires in candidates:
        if state != S.QUEUED and not (expires is None or expires < now or _holder_is_dead(holder)):
            continue
        taken = _try_take(db, cid, state, holder, worker_id, lease_seconds)
        if taken is not None:
            return taken
    return None


def _try_take(db, job_id, seen_state, seen_holder, worker_id, lease_seconds) -> TuningJob | None:
    now = utcnow()
    target = S.CANCELLING if seen_state == S.CANCELLING else S.PENDING
    with db.session() as s:
        condition = [TuningJob.id == job_id, TuningJob.state == seen_state]
        # Compare-and-set on what we saw: if another worker took or renewed it meanwhile, the
        # update matches no row and we move on.
        condition.append(
            TuningJob.worker_id.is_(None)
            if seen_holder is None
            else TuningJob.worker_id == seen_holder
        )
        result = s.execute(
            update(TuningJob)
            .where(*condition)
            .values(
                state=target,
                worker_id=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=func.coalesce(TuningJob.started_at, now),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        reclaimed = seen_state != S.QUEUED
        s.add(
            JobEvent(
                job_id=job_id,
                kind="claimed",
                message=(
                    f"reclaimed from {seen_holder} (lease expired)" if reclaimed else "claimed"
                )
                + f" by worker {worker_id}",
                data={"worker": worker_id, "previous_state": seen_state},
            )
        )
        return s.get(TuningJob, job_id)


@dataclass
class Heartbeat:
    held: bool
    state: str | None
    requested_action: str | None


def heartbeat(db: Database, job_id: str, worker_id: str, lease_seconds: float) -> Heartbeat:
    """Renew the lease; tell the worker whether it still holds the job and what users asked."""
    now = utcnow()
    with db.session() as s:
        result = s.execute(
            update(TuningJob)
            .where(TuningJob.id == job_id, TuningJob.worker_id == worker_id)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
        row = s.execute(
            select(TuningJob.state, TuningJob.requested_action).where(TuningJob.id == job_id)
        ).one_or_none()
    return Heartbeat(
        held=result.rowcount == 1,
        state=row[0] if row else None,
        requested_action=row[1] if row else None,
    )


def set_progress(
    db: Database, job_id: str, worker_id: str, step: str, progress: float, eta_seconds: float | None
) -> None:
    with db.session() as s:
        s.execute(
            update(TuningJob)
            .where(TuningJob.id == job_id, TuningJob.worker_id == worker_id)
            .values(step=step[:64], progress=max(0.0, min(1.0, progress)), eta_seconds=eta_seconds)
            .execution_options(synchronize_session=False)
        )


def update_job(db: Database, job_id: str, **fields: Any) -> None:
    with db.session() as s:
        s.execute(
            update(TuningJob)
            .where(TuningJob.id == job_id)
            .values(**fields)
            .execution_options(synchronize_session=False)
        )


def add_event(
    db: Database, job_id: str, kind: str, message: str, data: dict[str, Any] | None = None
) -> None:
    with db.session() as s:
        s.add(JobEvent(job_id=job_id, kind=kind, message=message, data=data))


def replace_metrics_after(db: Database, job_id: str, step: int, rows: list[dict[str, Any]]) -> None:
    """Drop stored metrics past ``step`` (replayed after a resume) and append ``rows``."""
    with db.session() as s:
        s.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > step))
        s.add_all(JobMetric(job_id=job_id, step=int(r.get("step", 0)), data=r) for r in rows)


def max_metric_step(db: Database, job_id: str) -> int:
    with db.session() as s:
        return s.scalar(
            select(func.coalesce(func.max(JobMetric.step), 0)).where(JobMetric.job_id == job_id)
        )


def set_step_state(
    db: Database,
    job_id: str,
    name: str,
    state: str,
    *,
    inputs: dict | None = None,
    outputs: dict | None = None,
) -> None:
    with db.session() as s:
        step = s.scalar(
            select(PipelineStep).where(PipelineStep.job_id == job_id, PipelineStep.name == name)
        )
        if step is None:
            raise ValueError(f"job {job_id} has no pipeline step {name!r}")
        step.state = state
        if inputs is not None:
            step.inputs = inputs
        if outputs is not None:
            step.outputs = outputs
        if state == "RUNNING":
            step.started_at, step.ended_at = step.started_at or utcnow(), None
        elif state in ("SUCCEEDED", "FAILED", "SKIPPED"):
            step.ended_at = utcnow()


# ---------------------------------------------------------------- user actions


def request_cancel(db: Database, job_id: str) -> TuningJob:
    """Cancel: at once if no worker holds the job, else ask its worker (CANCELLING)."""
    job = get_job(db, job_id)
    if job.state in (S.QUEUED, S.PAUSED):
        return transition(db, job_id, S.CANCELLED, message="cancelled by user")
    if job.state in (S.PENDING, S.RUNNING):
        return transition(
            db, job_id, S.CANCELLING, requested_action="cancel", message="cancel requested"
        )
    raise IllegalTransition(job_id, job.state, S.CANCELLED)


def request_pause(db: Database, job_id: str) -> TuningJob:
    """Pause: a queued job at once; a running one at its next step, after a checkpoint."""
    job = get_job(db, job_id)
    if job.state == S.QUEUED:
        return transition(db, job_id, S.PAUSED, message="paused by user")
    if job.state in (S.PENDING, S.RUNNING):
        update_job(db, job_id, requested_action="pause")
        add_event(db, job_id, "pause", "pause requested; the worker checkpoints and stops")
        return get_job(db, job_id)
    raise IllegalTransition(job_id, job.state, S.PAUSED)


def resume(db: Database, job_id: str) -> TuningJob:
    return transition(
        db, job_id, S.QUEUED, message="resumed by user; queued to continue from its checkpoint"
    )

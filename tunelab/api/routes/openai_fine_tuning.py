"""OpenAI's fine-tuning jobs API on TuneLab's jobs: create (submit_job, like every other face),
list, retrieve, cancel, pause, resume, events and checkpoints, in OpenAI's shapes."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from tunelab.api.deps import ServicesDep
from tunelab.api.openai_errors import OpenAIError, OpenAIRoute
from tunelab.api.openai_ft import (
    FineTuningJobCreate,
    build_config,
    fine_tuned_model_name,
    request_record,
)
from tunelab.api.openai_job_log import checkpoints_page, events_page
from tunelab.api.openai_views import REQUEST_EVENT, get_ft_job, job_objects, jobs_page
from tunelab.jobs import store
from tunelab.jobs.states import IllegalTransition
from tunelab.jobs.submit import submit_job
from tunelab.registry.datasets import get_dataset
from tunelab.registry.models import ModelNotRegistered, get_version

router = APIRouter(
    prefix="/v1/fine_tuning/jobs", tags=["openai fine-tuning"], route_class=OpenAIRoute
)


def _tuned_model(services, name: str):
    """The registered version ``model`` names (an ``ft:`` name, ``name`` or ``name@version``),
    or None for a base model."""
    try:
        return get_version(services.db, name)
    except (ModelNotRegistered, ValueError):
        return None


@router.post("")
def create(body: FineTuningJobCreate, services: ServicesDep) -> dict:
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        if file_id is not None and (len(file_id) > 40 or get_dataset(services.db, file_id) is None):
            raise OpenAIError(
                400,
                "invalid_file",
                f"{param}: no file {file_id[:64]!r} (upload it with POST /v1/files)",
                param,
            )
    tuned_from = _tuned_model(services, body.model)
    config = build_config(body, tuned_from)
    name = fine_tuned_model_name(config.base_model, body.suffix)
    while _tuned_model(services, name) is not None:  # a new name must not add a version
        name = fine_tuned_model_name(config.base_model, body.suffix)
    datasets = {"train": body.training_file, "validation": body.validation_file}
    job, _ = submit_job(
        services.db, services.artifacts, config=config, name=name, datasets=datasets
    )
    # Written right after the job row; the worker never reads it, so a claim between the two
    # writes changes nothing.
    store.add_event(
        services.db,
        job.id,
        REQUEST_EVENT,
        "created through the OpenAI fine-tuning API",
        request_record(body, name),
    )
    return job_objects(services.db, [job])[0]


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """OpenAI's ``metadata[key]=value`` query parameters."""
    pairs = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    return pairs or None


@router.get("")
def list_(
    request: Request,
    services: ServicesDep,
    after: str | None = Query(None, max_length=64),
    limit: int = Query(20, ge=1, le=100),
) -> dict:
    return jobs_page(services.db, after, limit, _metadata_filter(request))


def _job(services, job_id: str):
    job = get_ft_job(services.db, job_id) if len(job_id) <= 40 else None
    if job is None:
        raise OpenAIError(
            404, "fine_tuning_job_not_found", f"No such fine-tuning job: {job_id[:64]}", "id"
        )
    return job


@router.get("/{job_id}")
def retrieve(job_id: str, services: ServicesDep) -> dict:
    return job_objects(services.db, [_job(services, job_id)])[0]


def _act(services, job_id: str, action, verb: str) -> dict:
    _job(services, job_id)
    try:
        job = action(services.db, job_id)
    except IllegalTransition as exc:
        raise OpenAIError(
            409, "invalid_job_state", f"cannot {verb} job {job_id}: {exc}", None
        ) from None
    return job_objects(services.db, [job])[0]


@router.post("/{job_id}/cancel")
def cancel(job_id: str, services: ServicesDep) -> dict:
    return _act(services, job_id, store.request_cancel, "cancel")


@router.post("/{job_id}/pause")
def pause(job_id: str, services: ServicesDep) -> dict:
    """A queued job pauses at once; a running one at its next step, after a checkpoint."""
    return _act(services, job_id, store.request_pause, "pause")


@router.post("/{job_id}/resume")
def resume(job_id: str, services: ServicesDep) -> dict:
    """A paused job is queued again and continues from its checkpoint."""
    return _act(services, job_id, store.resume, "resume")


@router.get("/{job_id}/events")
def events(
    job_id: str,
    services: ServicesDep,
    after: str | None = Query(None, max_length=64),
    limit: int = Query(20, ge=1, le=1000),
) -> dict:
    return events_page(services.db, _job(services, job_id), after, limit)


@router.get("/{job_id}/checkpoints")
def checkpoints(
    job_id: str,
    services: ServicesDep,
    after: str | None = Query(None, max_length=64),
    limit: int = Query(10, ge=1, le=100),
) -> dict:
    return checkpoints_page(services.db, _job(services, job_id), after, limit)

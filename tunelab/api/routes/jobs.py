"""Tuning jobs: create, list, get, cancel, pause, resume, events, metrics, kept checkpoints."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import ValidationError

from tunelab import auth
from tunelab.api.deps import CurrentKey, ServicesDep
from tunelab.api.errors import ApiError
from tunelab.api.schemas import TuningJobCreate
from tunelab.graders.spec import error_path  # a grader's errors without union tags
from tunelab.jobs import store
from tunelab.jobs.methods import (
    DatasetRoleError,
    UnknownMethod,
    check_dataset_roles,
    method_spec,
)
from tunelab.jobs.states import IllegalTransition
from tunelab.jobs.submit import submit_job
from tunelab.jobs.views import job_view
from tunelab.models.device import AcceleratorUnavailable
from tunelab.registry.continuation import ContinuationError
from tunelab.registry.datasets import get_dataset
from tunelab.registry.names import InvalidModelName, check_tuned_model_name
from tunelab.registry.resolve import ModelNotFound, check_request_config

router = APIRouter(prefix="/v1/tuningJobs", tags=["tuning jobs"])


@router.post("", status_code=201)
def create(body: TuningJobCreate, services: ServicesDep, key: CurrentKey) -> dict:
    try:
        config = method_spec(body.method).config(**body.config)
    except UnknownMethod as exc:
        raise ApiError(422, "invalid_request", str(exc), {"field": "method"}) from None
    except ValidationError as exc:
        errors = [
            {"field": "config." + ".".join(error_path(e["loc"])), "message": e["msg"]}
            for e in exc.errors(include_url=False)
        ]
        raise ApiError(
            422, "invalid_config", f"{len(errors)} invalid tuning parameter(s)", {"errors": errors}
        ) from None
    if getattr(config, "nodes", 1) > 1 and not auth.allows(key.scope, "admin"):
        # Machine 0 of a multi-machine job listens on master_port on every interface, and
        # torch.distributed's store and gloo have no authentication: an operator's decision.
        raise ApiError(
            403,
            "forbidden",
            "a job on several machines (config.nodes > 1) opens an unauthenticated "
            "torch.distributed port on this server: it needs an API key with the 'admin' scope",
            {"field": "config.nodes", "required_scope": "admin", "key_scope": key.scope},
        )
    try:  # the same name rule as every face; models named by the config must be servable
        check_tuned_model_name(body.tuned_model_display_name)
    except InvalidModelName as exc:
        raise ApiError(
            422, "invalid_request", str(exc), {"field": "tuned_model_display_name"}
        ) from None
    try:
        check_request_config(services, config)
    except ModelNotFound as exc:
        raise ApiError(404, "model_not_found", str(exc)) from None
    roles = body.dataset_roles()
    if not roles:
        raise ApiError(
            422,
            "invalid_request",
            "give train_dataset (or datasets by role)",
            {"field": "train_dataset"},
        )
    try:  # before the datasets are looked up: a misspelt role is the error, not a 404
        check_dataset_roles(body.method, roles)
    except DatasetRoleError as exc:
        errors = [{"field": body.role_field(r), "message": m} for r, m in exc.problems]
        raise ApiError(
            422,
            "invalid_request",
            str(exc),
            {"field": errors[0]["field"], "allowed_roles": list(exc.allowed), "errors": errors},
        ) from None
    for role, ref in roles.items():
        if len(ref) > 40 or get_dataset(services.db, ref) is None:
            raise ApiError(
                404,
                "not_found",
                f"{role} dataset: no dataset {ref[:40]!r} (upload it with POST /v1/datasets)",
            )
    try:
        job, _ = submit_job(
            services.db,
            services.artifacts,
            config=config,
            name=body.tuned_model_display_name,
            datasets=roles,
            idempotency_key=body.idempotency_key,
        )
    except ContinuationError as exc:  # config.base_model names a tuned model it cannot use
        raise ApiError(422, "invalid_request", str(exc), {"field": "config.base_model"}) from None
    except AcceleratorUnavailable as exc:  # e.g. accelerator cuda on a machine without CUDA
        raise ApiError(422, "invalid_config", str(exc), {"field": f"config.{exc.field}"}) from None
    return job_view(services.db, job)


@router.get("")
def list_(
    services: ServicesDep,
    state: str | None = Query(None, max_length=16),
    limit: int = Query(100, ge=1, le=1000),
) -> dict:
    return {
        "tuning_jobs": [
            job_view(services.db, j) for j in store.list_jobs(services.db, state, limit)
        ]
    }


def _job(services, job_id: str):
    try:
        return store.get_job(services.db, job_id)
    except store.JobNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.get("/{job_id}")
def get(job_id: str, services: ServicesDep) -> dict:
    return job_view(services.db, _job(services, job_id))


def _act(services, job_id: str, action) -> dict:
    _job(services, job_id)
    try:
        job = action(services.db, job_id)
    except IllegalTransition as exc:
        raise ApiError(409, "illegal_state", str(exc), {"state": exc.current}) from None
    return job_view(services.db, job)


@router.post("/{job_id}:cancel")
def cancel(job_id: str, services: ServicesDep) -> dict:
    return _act(services, job_id, store.request_cancel)


@router.post("/{job_id}:pause")
def pause(job_id: str, services: ServicesDep) -> dict:
    return _act(services, job_id, store.request_pause)


@router.post("/{job_id}:resume")
def resume(job_id: str, services: ServicesDep) -> dict:
    return _act(services, job_id, store.resume)


@router.get("/{job_id}/events")
def events(job_id: str, services: ServicesDep, after: int = Query(0, ge=0)) -> dict:
    _job(services, job_id)
    return {
        "events": [
            {"id": e.id, "time": e.time, "kind": e.kind, "message": e.message, "data": e.data}
            for e in store.events_of(services.db, job_id, after_id=after)
        ]
    }


@router.get("/{job_id}/metrics")
def metrics(job_id: str, services: ServicesDep) -> dict:
    _job(services, job_id)
    return {"metrics": store.metrics_of(services.db, job_id)}


@router.get("/{job_id}/checkpoints")
def checkpoints(job_id: str, services: ServicesDep) -> dict:
    """The job's kept checkpoints with their metrics and evaluation (tunelab.registry.checkpoints)."""
    from tunelab.registry.checkpoints import listing

    _job(services, job_id)
    return listing(services.db, job_id)

"""The registry of tuned models: list, get (with versions), delete, lineage, kept checkpoints
and their promotion to a version."""

from __future__ import annotations

from fastapi import APIRouter, Query

from tunelab.api.deps import ServicesDep
from tunelab.api.errors import ApiError
from tunelab.jobs.views import version_view
from tunelab.registry.models import (
    ModelNotRegistered,
    delete_version,
    downstream,
    get_version,
    get_versions,
    list_models,
    upstream,
    version_refs,
)

router = APIRouter(prefix="/v1/tunedModels", tags=["tuned models"])


@router.get("")
def list_(services: ServicesDep) -> dict:
    return {"tuned_models": [m.__dict__ for m in list_models(services.db)]}


@router.get("/{name}")
def get(name: str, services: ServicesDep) -> dict:
    try:
        versions = get_versions(services.db, name)
    except ModelNotRegistered as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return {"name": name, "versions": [version_view(v) for v in versions]}


@router.delete("/{name}")
def delete(name: str, services: ServicesDep, version: int | None = Query(None, ge=1)) -> dict:
    try:
        removed = delete_version(services.db, services.artifacts, name, version)
    except ModelNotRegistered as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return {"deleted_versions": removed}


@router.get("/{name}/lineage")
def lineage(name: str, services: ServicesDep, version: int | None = Query(None, ge=1)) -> dict:
    try:
        v = get_version(services.db, name, version)
    except ModelNotRegistered as exc:
        raise ApiError(404, "not_found", str(exc)) from None

    def node(kind: str, node_id: str) -> dict:
        ref = refs.get(node_id) if kind == "model_version" else None
        return {"kind": kind, "id": node_id} | ({"ref": ref} if ref else {})

    def edge(e) -> dict:
        return {
            "from": node(e.src_kind, e.src_id),
            "to": node(e.dst_kind, e.dst_id),
            "relation": e.relation,
        }

    ups = upstream(services.db, "model_version", v.id)
    # name@version of the model versions in the chain (continued tuning's parents)
    refs = version_refs(services.db, {e.src_id for e in ups if e.src_kind == "model_version"})
    datasets = sorted({e.src_id for e in ups if e.src_kind == "dataset"})
    return {
        "model_version": version_view(v),
        "upstream": [edge(e) for e in ups],
        "datasets": {d: [edge(e) for e in downstream(services.db, "dataset", d)] for d in datasets},
    }


@router.get("/{name}/checkpoints")
def checkpoints(name: str, services: ServicesDep, version: int | None = Query(None, ge=1)) -> dict:
    """The kept checkpoints of the job that made this version (default the latest), each with
    its step, epoch, training metrics and in-job evaluation."""
    from tunelab.registry.checkpoints import listing, source_job

    try:
        v = get_version(services.db, name, version)
    except ModelNotRegistered as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    job_id = source_job(v)
    found = listing(services.db, job_id) if job_id else {"checkpoints": []}
    return {
        "name": name,
        "version": v.version,
        "job_id": job_id,
        "checkpoints": found["checkpoints"],
    }


@router.post("/{name}/checkpoints/{step}:promote", status_code=201)
def promote(
    name: str, step: int, services: ServicesDep, version: int | None = Query(None, ge=1)
) -> dict:
    """Register the kept checkpoint at ``step`` as the next version of ``name`` (lineage: the
    job and the version it was a checkpoint of); promoting it again returns that version."""
    from tunelab.registry.checkpoints import CheckpointNotFound
    from tunelab.registry.checkpoints import promote as promote_checkpoint

    try:
        v = get_version(services.db, name, version)
        return version_view(promote_checkpoint(services.db, v, step))
    except (ModelNotRegistered, CheckpointNotFound) as exc:
        raise ApiError(404, "not_found", str(exc)) from None

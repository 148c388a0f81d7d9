"""The registry of tuned models: list, get (with versions), delete, lineage, kept checkpoints
and their promotion to a version."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from tunelab.api.deps import ServicesDep
from tunelab.api.errors import ApiError
from tunelab.api.schemas import AliasRequest
from tunelab.jobs.views import version_view
from tunelab.registry.aliases import InvalidAlias, remove_alias, set_alias
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
def list_(services: ServicesDep, request: Request) -> dict:
    """Every tuned model, with its latest version's facts (``vllm``: whether vLLM can serve it)."""
    max_rank = _max_lora_rank(request)
    return {
        "tuned_models": [
            m.__dict__ | {"vllm": _judged(m.vllm, max_rank)}
            for m in list_models(services.db, services.artifacts)
        ]
    }


@router.get("/{name}")
def get(name: str, services: ServicesDep, request: Request) -> dict:
    try:
        versions = get_versions(services.db, name)
    except ModelNotRegistered as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    max_rank = _max_lora_rank(request)
    return {"name": name, "versions": [_with_serving(services, v, max_rank) for v in versions]}


def _max_lora_rank(request: Request) -> int | None:
    """This server's ``--max-lora-rank`` when it runs vLLM (``--engine vllm``), else None."""
    backend = getattr(request.app.state.inference, "backend", None)
    return backend.options.max_lora_rank if backend is not None else None


def _judged(stored: dict | None, max_lora_rank: int | None) -> dict | None:
    from tunelab.serving.vllm_compat import VllmVerdict, against_server

    if stored is None:
        return None
    return against_server(VllmVerdict.from_dict(stored), max_lora_rank).as_dict()


def _with_serving(services, version, max_lora_rank: int | None) -> dict:
    """The version, with whether vLLM can serve its adapter and why not: the verdict stored at
    its registration, judged against this server's ``--max-lora-rank`` when it runs vLLM."""
    from tunelab.serving.vllm_compat import check_version

    verdict = check_version(services, version, max_lora_rank=max_lora_rank)
    return version_view(version, services.db) | {"vllm": verdict.as_dict()}


@router.put("/{name}/aliases/{alias}")
def set_alias_(name: str, alias: str, body: AliasRequest, services: ServicesDep) -> dict:
    """Point ``name@alias`` at a version (moving it if it named another); ``default`` is what
    ``name`` alone means."""
    try:
        v = set_alias(services.db, name, body.version, alias)
    except InvalidAlias as exc:
        raise ApiError(400, "invalid_request", str(exc), {"param": "alias"}) from None
    except ModelNotRegistered as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return version_view(v, services.db)


@router.delete("/{name}/aliases/{alias}")
def remove_alias_(name: str, alias: str, services: ServicesDep) -> dict:
    try:
        remove_alias(services.db, name, alias)
    except InvalidAlias as exc:
        raise ApiError(400, "invalid_request", str(exc), {"param": "alias"}) from None
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return {"removed": f"{name}@{alias}"}


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
        "model_version": version_view(v, services.db),
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
        return version_view(promote_checkpoint(services.db, v, step, services.artifacts))
    except (ModelNotRegistered, CheckpointNotFound) as exc:
        raise ApiError(404, "not_found", str(exc)) from None

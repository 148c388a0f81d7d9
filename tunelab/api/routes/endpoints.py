"""Endpoints: list, deploy a tuned model version (with its traffic share), undeploy."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.api.deps import ServicesDep
from tunelab.api.errors import ApiError
from tunelab.api.schemas import DeployRequest, UndeployRequest
from tunelab.registry.endpoints import (
    TrafficSplitError,
    deploy_version,
    deployed_version,
    deployments,
    list_endpoints,
    undeploy,
)
from tunelab.registry.models import ModelNotRegistered, get_version

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


def endpoint_view(services, e) -> dict:
    v = deployed_version(services.db, e.id)
    return {
        "id": e.id,
        "display_name": e.display_name,
        "base_model": e.base_model,
        "deployed_model": f"{v.model_name}@{v.version}" if v else None,
        "deployed_models": [
            {
                "model": f"{d.version.model_name}@{d.version.version}",
                "model_version_id": d.version.id,
                "traffic_percentage": d.traffic_percentage,
            }
            for d in deployments(services.db, e.id)
        ],
        "create_time": e.created_at,
    }


@router.get("")
def list_(services: ServicesDep) -> dict:
    return {"endpoints": [endpoint_view(services, e) for e in list_endpoints(services.db)]}


def _serving_changed(request: Request) -> None:
    """The serving engine follows the deployments (``--engine vllm`` loads and unloads
    adapters); a server without inference has nothing to tell."""
    from tunelab.serving.vllm_engine import VllmError

    pool = request.app.state.inference
    if pool is not None:
        try:
            pool.deployments_changed()
        except VllmError as exc:
            from tunelab.api.inference import backend_error

            raise backend_error(exc) from None


@router.post("", status_code=201)
def deploy(body: DeployRequest, services: ServicesDep, request: Request) -> dict:
    try:
        version = get_version(services.db, body.model)
    except (ModelNotRegistered, ValueError) as exc:
        raise ApiError(404, "not_found", str(exc), {"param": "model"}) from None
    if request.app.state.inference is not None:
        try:  # refused before anything is recorded: the engine could never serve it
            request.app.state.inference.check_deployable(version)
        except ValueError as exc:
            raise ApiError(409, "not_servable", str(exc)) from None
    try:
        endpoint = deploy_version(services.db, version.id, body.traffic_percentage)
    except TrafficSplitError as exc:
        raise ApiError(400, "invalid_request", str(exc), {"param": "traffic_percentage"}) from None
    _serving_changed(request)
    return endpoint_view(services, endpoint)


@router.post("/{endpoint_id}:undeploy")
def undeploy_(
    endpoint_id: str, body: UndeployRequest, services: ServicesDep, request: Request
) -> dict:
    """Stops serving at once: the next request for an undeployed version is refused, and the
    engines unload its adapter as soon as no running request uses it."""
    version_id = body.model_version_id
    if body.model is not None:
        try:
            version_id = get_version(services.db, body.model).id
        except ModelNotRegistered as exc:
            raise ApiError(404, "not_found", str(exc), {"param": "model"}) from None
    removed = undeploy(services.db, endpoint_id, version_id)
    if not removed:
        raise ApiError(404, "not_found", f"nothing deployed on endpoint {endpoint_id!r} matches")
    pool = getattr(request.app.state, "inference", None)
    if pool is not None:
        pool.drop_versions(removed)
    _serving_changed(request)
    return {"undeployed": len(removed), "model_version_ids": removed}

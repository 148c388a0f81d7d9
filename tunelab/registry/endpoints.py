"""Endpoints: where tuned model versions are deployed. As in Vertex, a tuned model is deployed
to its own endpoint when its job succeeds; the server behind every endpoint keeps one copy of
each base model in memory and serves the deployed adapters on top of it."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from tunelab.db import Database
from tunelab.db.schema import Deployment, Endpoint, ModelVersion


def endpoint_id_for(model_name: str) -> str:
    return "ep-" + hashlib.sha256(model_name.encode()).hexdigest()[:16]


def deploy_version(db: Database, model_version_id: str) -> Endpoint:
    """Deploy a version on its model's endpoint (created on first use); the newest deployment of
    a model is the one its endpoint serves. Idempotent."""
    with db.session() as s:
        version = s.get(ModelVersion, model_version_id)
        if version is None:
            raise LookupError(f"no model version {model_version_id!r}")
        eid = endpoint_id_for(version.model_name)
        endpoint = s.get(Endpoint, eid)
        if endpoint is None:
            endpoint = Endpoint(
                id=eid, display_name=version.model_name, base_model=version.base_model
            )
            s.add(endpoint)
            s.flush()
        exists = s.scalar(
            select(Deployment).where(
                Deployment.endpoint_id == eid, Deployment.model_version_id == model_version_id
            )
        )
        if exists is None:
            s.add(Deployment(endpoint_id=eid, model_version_id=model_version_id))
    return endpoint


def undeploy(db: Database, endpoint_id: str, model_version_id: str | None = None) -> int:
    """Remove one deployment, or all of an endpoint's; returns how many were removed."""
    with db.session() as s:
        query = s.query(Deployment).filter(Deployment.endpoint_id == endpoint_id)
        if model_version_id is not None:
            query = query.filter(Deployment.model_version_id == model_version_id)
        return query.delete()


def deployed_version(db: Database, endpoint_id: str) -> ModelVersion | None:
    with db.session() as s:
        return s.scalar(
            select(ModelVersion)
            .join(Deployment, Deployment.model_version_id == ModelVersion.id)
            .where(Deployment.endpoint_id == endpoint_id)
            .order_by(ModelVersion.version.desc())
        )


def list_endpoints(db: Database) -> list[Endpoint]:
    with db.session() as s:
        return list(s.scalars(select(Endpoint).order_by(Endpoint.created_at)))

"""Endpoints: where tuned model versions are served, as in Vertex.

Each tuned model has its endpoint (created at its first deployment). An endpoint serves exactly
the versions deployed to it: a version is served (by ``name@version``, an alias naming it, or
``name`` when its default alias does) only while deployed, and undeploying stops that at once.
Requests to the endpoint id itself are shared among its versions by their traffic percentages,
which sum to 100. A new version is deployed only by an explicit deploy, or by its tuning job's
``deploy`` setting (:mod:`tunelab.jobs.deploy_policy`); registering alone never changes what an
endpoint serves.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from sqlalchemy import select

from tunelab.db import Database
from tunelab.db.schema import Deployment, Endpoint, ModelVersion


class TrafficSplitError(ValueError):
    """A traffic percentage outside 0..100, or a split that cannot sum to 100."""


@dataclass(frozen=True)
class DeployedVersion:
    version: ModelVersion
    traffic_percentage: int


def endpoint_id_for(model_name: str) -> str:
    return "ep-" + hashlib.sha256(model_name.encode()).hexdigest()[:16]


def deploy_version(
    db: Database, model_version_id: str, traffic_percentage: int | None = None
) -> Endpoint:
    """Deploy a version on its model's endpoint (created on first use), next to the versions
    already deployed there. ``traffic_percentage``: its share of the endpoint's requests; None
    gives it all of them (the others stay deployed, served when named, with 0). The others'
    shares are scaled to fill the rest. Deploying a deployed version only changes its share."""
    if traffic_percentage is not None and not 0 <= traffic_percentage <= 100:
        raise TrafficSplitError(
            f"traffic_percentage: {traffic_percentage} is not a percentage (0 to 100)"
        )
    share = 100 if traffic_percentage is None else traffic_percentage
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
        rows = list(s.scalars(select(Deployment).where(Deployment.endpoint_id == eid)))
        mine = next((d for d in rows if d.model_version_id == model_version_id), None)
        others = [d for d in rows if d is not mine]
        if not others:
            share = 100  # the only version serves every request to the endpoint
        elif share < 100 and not any(d.traffic_percentage for d in others):
            # the rest must go somewhere: to the newest other deployment
            newest = max(others, key=lambda d: d.created_at)
            newest.traffic_percentage = 1  # scaled to the rest below
        if mine is None:
            mine = Deployment(endpoint_id=eid, model_version_id=model_version_id)
            s.add(mine)
        mine.traffic_percentage = share
        _scale(others, 100 - share)
    return endpoint


def undeploy(db: Database, endpoint_id: str, model_version_id: str | None = None) -> list[str]:
    """Remove one deployment, or all of an endpoint's; the ids of the versions removed. The
    traffic of a removed version goes to the ones left, in proportion to their shares."""
    with db.session() as s:
        rows = list(s.scalars(select(Deployment).where(Deployment.endpoint_id == endpoint_id)))
        gone = [d for d in rows if model_version_id in (None, d.model_version_id)]
        left = [d for d in rows if d not in gone]
        for d in gone:
            s.delete(d)
        if left and not any(d.traffic_percentage for d in left):
            max(left, key=lambda d: d.created_at).traffic_percentage = 100
        _scale(left, 100)
        return [d.model_version_id for d in gone]


def undeploy_version_everywhere(session, model_version_id: str) -> None:
    """Inside the caller's transaction (deleting a version): its deployments go, and their
    endpoints' traffic goes to the versions left."""
    rows = list(
        session.scalars(select(Deployment).where(Deployment.model_version_id == model_version_id))
    )
    for row in rows:
        session.delete(row)
        session.flush()
        left = list(
            session.scalars(select(Deployment).where(Deployment.endpoint_id == row.endpoint_id))
        )
        if left and not any(d.traffic_percentage for d in left):
            max(left, key=lambda d: d.created_at).traffic_percentage = 100
        _scale(left, 100)


def _scale(rows: list[Deployment], total: int) -> None:
    """Set the shares of ``rows`` to sum to ``total``, keeping their proportions (largest
    remainders get the rounding); all zero stays all zero unless ``total`` must be placed."""
    if not rows:
        return
    weights = [d.traffic_percentage for d in rows]
    if not any(weights):
        if total:
            weights = [1] * len(rows)
        else:
            return
    whole = sum(weights)
    exact = [w * total / whole for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(rows)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    for d, share in zip(rows, shares, strict=True):
        d.traffic_percentage = share


def deployments(db: Database, endpoint_id: str) -> list[DeployedVersion]:
    """The versions deployed on an endpoint with their traffic shares, newest version first."""
    with db.session() as s:
        rows = s.execute(
            select(ModelVersion, Deployment.traffic_percentage)
            .join(Deployment, Deployment.model_version_id == ModelVersion.id)
            .where(Deployment.endpoint_id == endpoint_id)
            .order_by(ModelVersion.version.desc())
        ).all()
    return [DeployedVersion(v, pct) for v, pct in rows]


def deployed_version(db: Database, endpoint_id: str) -> ModelVersion | None:
    """The version with the largest share of the endpoint's traffic (the newest on a tie)."""
    found = deployments(db, endpoint_id)
    if not found:
        return None
    return max(found, key=lambda d: (d.traffic_percentage, d.version.version)).version


def pick_deployed(db: Database, endpoint_id: str, rng: random.Random | None = None):
    """The version that answers one request to the endpoint id, drawn by the traffic split."""
    found = [d for d in deployments(db, endpoint_id) if d.traffic_percentage > 0]
    if not found:
        return deployed_version(db, endpoint_id)
    weights = [d.traffic_percentage for d in found]
    return (rng or random).choices([d.version for d in found], weights=weights)[0]


def is_deployed(db: Database, model_version_id: str) -> bool:
    with db.session() as s:
        return (
            s.scalar(select(Deployment.id).where(Deployment.model_version_id == model_version_id))
            is not None
        )


def deployed_version_ids(db: Database, model_name: str) -> dict[str, int]:
    """{version id: traffic percentage} of ``model_name``'s deployed versions."""
    with db.session() as s:
        rows = s.execute(
            select(Deployment.model_version_id, Deployment.traffic_percentage)
            .join(ModelVersion, Deployment.model_version_id == ModelVersion.id)
            .where(ModelVersion.model_name == model_name)
        ).all()
    return dict(rows)


def list_endpoints(db: Database) -> list[Endpoint]:
    with db.session() as s:
        return list(s.scalars(select(Endpoint).order_by(Endpoint.created_at)))

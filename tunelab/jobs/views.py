"""The public shape of a job and a model version: what ``jobs show --json``, the REST API and the
Studio all present, built in one place."""

from __future__ import annotations

from typing import Any

from tunelab.db import Database
from tunelab.db.schema import ModelVersion, TuningJob
from tunelab.jobs import store


def job_view(db: Database, job: TuningJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "display_name": job.display_name,
        "method": job.method,
        "base_model": job.base_model,
        "config": job.config,
        "datasets": job.datasets,
        "state": job.state,
        "step": job.step,
        "progress": job.progress,
        "eta_seconds": job.eta_seconds,
        "error": job.error,
        "attempts": job.attempts,
        "requested_action": job.requested_action,
        "tuned_model": f"{job.tuned_model_name}@{job.tuned_model_version}"
        if job.tuned_model_version
        else None,
        "tuned_model_name": job.tuned_model_name,
        "tuned_model_version": job.tuned_model_version,
        "endpoint": job.endpoint,
        "usage": job.usage,
        "create_time": job.created_at,
        "start_time": job.started_at,
        "end_time": job.ended_at,
        "pipeline": [
            {
                "name": s.name,
                "state": s.state,
                "inputs": s.inputs,
                "outputs": s.outputs,
                "start_time": s.started_at,
                "end_time": s.ended_at,
            }
            for s in store.steps_of(db, job.id)
        ],
    }


def version_view(version: ModelVersion, db: Database | None = None) -> dict[str, Any]:
    """With ``db``, also its aliases and whether (and how much traffic) it is deployed."""
    extra: dict[str, Any] = {}
    if db is not None:
        from tunelab.registry.aliases import aliases_by_version
        from tunelab.registry.endpoints import deployed_version_ids, endpoint_id_for

        traffic = deployed_version_ids(db, version.model_name).get(version.id)
        extra = {
            "aliases": aliases_by_version(db, version.model_name).get(version.id, []),
            "deployment": None
            if traffic is None
            else {"endpoint": endpoint_id_for(version.model_name), "traffic_percentage": traffic},
        }
    return extra | {
        "id": version.id,
        "name": version.model_name,
        "version": version.version,
        "method": version.method,
        "base_model": version.base_model,
        "adapter_sha256": version.adapter_sha256,
        "config": version.config,
        "data_stats": version.data_stats,
        "metrics": version.metrics,
        "evaluation": version.evaluation,
        "source_job": version.source_job_id,
        "deploy_note": version.deploy_note,
        "create_time": version.created_at,
    }

"""The process's database and artifact store, opened from settings. Every face (CLI, API,
worker) gets them here, so all of them see the same jobs and models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.config import get_settings
from tunelab.db import Database, open_database
from tunelab.registry.artifacts import ArtifactStore, open_artifact_store


@dataclass(frozen=True)
class Services:
    db: Database
    artifacts: ArtifactStore


def open_services() -> Services:
    settings = get_settings()
    return Services(
        db=open_database(settings.database_url),
        artifacts=open_artifact_store(settings.artifacts_url),
    )


def resolve_model_ref(services: Services, ref: str) -> tuple[str | None, Path | None]:
    """What a model reference names: (base model ref, None) or (None, adapter bundle folder).

    Tried in order: a registered tuned model (``name`` or ``name@version``), an adapter bundle
    folder, then a base model (catalog name, folder, hub id).
    """
    from tunelab.bundle import MANIFEST
    from tunelab.registry.models import ModelNotRegistered, adapter_artifact, get_version

    try:
        version = get_version(services.db, ref)
    except ModelNotRegistered:
        version = None
    if version is not None:
        artifact = adapter_artifact(services.db, version)
        return None, services.artifacts.local_path(artifact.uri)
    if (Path(ref) / MANIFEST).is_file():
        return None, Path(ref)
    return ref, None

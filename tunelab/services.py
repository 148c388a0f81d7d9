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


def resolve_model_ref(
    services: Services, ref: str, *, allow_folder: bool = False
) -> tuple[str | None, Path | None]:
    """What a model reference names: (base model ref, None) or (None, adapter bundle folder).

    By the one resolver (:func:`tunelab.registry.resolve.resolve`): an endpoint id, a servable
    base model, a registered tuned model (``name`` or ``name@version``); with ``allow_folder``
    (the operator's CLI and the worker, never a request) also an adapter bundle folder.
    Raises :class:`tunelab.registry.resolve.ModelNotFound`.
    """
    from tunelab.registry.resolve import resolve

    target = resolve(services, ref, allow_folder=allow_folder)
    if target.adapter_dir is not None:
        return None, target.adapter_dir
    return target.base_model, None

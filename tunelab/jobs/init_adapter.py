"""The adapter a job starts from (``init_adapter``), resolved in the job's prepare step: a
registered tuned model (``name@version``; its artifact, and the version id for lineage) or an
adapter bundle folder. Shared by every pipeline whose config has ``init_adapter``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.bundle import MANIFEST
from tunelab.jobs.errors import PermanentError
from tunelab.jobs.pipeline import StepContext


def resolve_init_adapter(ctx: StepContext, ref: str | None) -> dict[str, Any]:
    """``{}`` without one; else ``init_adapter_dir`` (and ``init_adapter_version_id``)."""
    from tunelab.registry.models import ModelNotRegistered, adapter_artifact, get_version

    if ref is None:
        return {}
    try:
        version = get_version(ctx.db, ref)
    except (ModelNotRegistered, ValueError):
        version = None
    if version is not None:
        folder = ctx.store.local_path(adapter_artifact(ctx.db, version).uri)
        return {"init_adapter_dir": str(folder), "init_adapter_version_id": version.id}
    if (Path(ref) / MANIFEST).is_file():
        return {"init_adapter_dir": str(Path(ref).resolve())}
    raise PermanentError(
        "init_adapter_not_found",
        f"init_adapter {ref!r} is neither a registered tuned model nor an adapter bundle folder",
    )

"""The adapter a job starts from (``init_adapter``), resolved in the job's prepare step: a
registered tuned model (``name@version``; its artifact, and the version id for lineage) or an
adapter bundle folder. Shared by every pipeline whose config has ``init_adapter``; SFT's and
DPO's prepare step is :func:`prepare_base_and_init_adapter`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.jobs.errors import PermanentError
from tunelab.jobs.pipeline import StepContext


def resolve_init_adapter(ctx: StepContext, ref: str | None) -> dict[str, Any]:
    """``{}`` without one; else ``init_adapter_dir`` (and ``init_adapter_version_id``)."""
    from tunelab.registry.resolve import ModelNotFound, resolve
    from tunelab.services import Services

    if ref is None:
        return {}
    # The one resolver; a folder is accepted here because REST refuses one at submit
    # (tunelab.registry.resolve.check_request_config): only the operator's CLI can name it.
    try:
        target = resolve(Services(ctx.db, ctx.store), ref, allow_folder=True)
    except ModelNotFound:
        target = None
    if target is None or target.adapter_dir is None:
        raise PermanentError(
            "init_adapter_not_found",
            f"init_adapter {ref!r} is neither a registered tuned model nor an adapter bundle folder",
        )
    out = {"init_adapter_dir": str(Path(target.adapter_dir).resolve())}
    if target.version is not None:
        out["init_adapter_version_id"] = target.version.id
    return out


def prepare_base_and_init_adapter(ctx: StepContext) -> dict[str, Any]:
    """A prepare step: resolve (and, once, convert) the config's base model, so training starts
    from a local folder, and the adapter a continued run starts from."""
    from tunelab.jobs.methods import method_spec
    from tunelab.models import resolve_model

    config = method_spec(ctx.job.method).config(**ctx.job.config)
    base = resolve_model(config.base_model)
    out = {"base_model": base.ref, "base_model_path": str(base.path), "source": base.source}
    return out | resolve_init_adapter(ctx, config.init_adapter)

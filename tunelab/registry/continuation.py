"""Continued (chained) tuning: ``--base NAME[@VERSION]`` of a tuned model means "start from its
adapter, on its base model". Resolved once, when the job is submitted, into the config every
face stores: ``base_model`` becomes the tuned model's base and ``init_adapter`` pins the exact
version (``name@version``), so a later version of NAME never changes what a queued or resumed
job starts from. The pipelines then record the lineage edge ``init_adapter`` from the parent
version to the new one (SFT -> SFT, SFT -> DPO, imported -> SFT...)."""

from __future__ import annotations

from pydantic import BaseModel

from tunelab.db import Database

CONTINUABLE = ("sft", "dpo", "imported")
"""Methods whose adapters a generative LoRA run can start from (not reward or embedding models)."""


class ContinuationError(ValueError):
    """``--base`` names a tuned model that this job cannot start from."""


def resolve_continuation(db: Database, config: BaseModel) -> BaseModel:
    """``config`` with a tuned-model ``base_model`` turned into base model + ``init_adapter``;
    unchanged when ``base_model`` is a base model (catalog name, folder, hub id)."""
    from tunelab.models.catalog import CATALOG
    from tunelab.registry.models import ModelNotRegistered, get_version

    ref = getattr(config, "base_model", None)
    if ref is None or ref in CATALOG:
        return config
    try:
        version = get_version(db, ref)
    except (ModelNotRegistered, ValueError):
        return config
    method = config.method  # type: ignore[attr-defined]
    if "init_adapter" not in type(config).model_fields:
        raise ContinuationError(
            f"base model {ref!r} is a tuned model; {method} tuning starts from a base model only"
        )
    if config.init_adapter is not None:  # type: ignore[attr-defined]
        raise ContinuationError(
            f"base model {ref!r} is a tuned model and init_adapter is "
            f"{config.init_adapter!r}: give one of them"  # type: ignore[attr-defined]
        )
    if version.method not in CONTINUABLE:
        raise ContinuationError(
            f"{version.model_name}@{version.version} is a {version.method} model; tuning continues "
            f"from {', '.join(CONTINUABLE)} adapters"
        )
    return type(config)(
        **config.model_dump()
        | {
            "base_model": version.base_model,
            "init_adapter": f"{version.model_name}@{version.version}",
        }
    )

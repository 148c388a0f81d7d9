"""What a model reference in a request names: the one resolver every face uses.

A reference is, tried in this order:
- a deployed endpoint id (``ep-…``): one of the versions deployed on it, drawn by its traffic
  split;
- a base model the operator made servable: a catalog name, or a name added with
  ``tunelab models add-base`` (:mod:`tunelab.models.bases`); before tuned models, so a tuned
  model registered under a base's name (before names were checked) cannot take its place;
- a registered tuned model: ``name`` (the version its ``default`` alias names), ``name@version``
  or ``name@alias`` (:mod:`tunelab.registry.aliases`);
- a kept checkpoint of the job that made a tuned model's latest version: ``name@checkpoint-STEP``
  (:mod:`tunelab.registry.checkpoints`).

Whether a tuned version may be *served* (it is deployed) is the serving faces' question
(:mod:`tunelab.serving.pool`): evaluation, export and continued tuning reach any version.

Anything else is :class:`ModelNotFound`, whose message repeats the reference and the names
that would work, never a server path: a request string is never turned into a folder, a home
directory or a hub lookup. Only the operator's own CLI may name a local adapter folder, and it
says so explicitly (``allow_folder=True``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab.db.schema import ModelVersion
from tunelab.models.bases import servable_base_names
from tunelab.models.names import is_model_name
from tunelab.services import Services

logger = logging.getLogger(__name__)

ENDPOINT_ID = re.compile(r"^ep-[0-9a-f]{16}$")
MAX_REF_LENGTH = 140


class ModelNotFound(LookupError):
    """No servable model has this reference; the message is safe to show any client."""


@dataclass(frozen=True)
class ModelTarget:
    ref: str
    """The reference as the caller wrote it."""
    kind: Literal["tuned", "base", "folder", "local"]
    """``folder``: an adapter bundle folder, ``local``: a base model folder or hub id; both only
    from the operator (``allow_folder``)."""
    base_model: str
    """The base model: a servable name; for a tuned model, the reference it was tuned from."""
    version: ModelVersion | None = None
    adapter_dir: Path | None = None
    """The adapter bundle of a tuned model (or of an operator-named folder)."""
    checkpoint_step: int | None = None
    """Set for ``name@checkpoint-STEP``: ``version`` is the model's, ``adapter_dir`` the
    checkpoint's."""

    @property
    def adapter_key(self) -> str | None:
        """What tells this adapter apart from every other in a server's cache."""
        if self.version is None:
            return None
        if self.checkpoint_step is None:
            return self.version.id
        return f"{self.version.id}@checkpoint-{self.checkpoint_step}"

    @property
    def method(self) -> str | None:
        return self.version.method if self.version is not None else None


def resolve(services: Services, ref: str, *, allow_folder: bool = False) -> ModelTarget:
    """The model ``ref`` names, without loading anything. See the module docstring.

    ``allow_folder`` (the operator's CLI and the worker, never a request) also accepts an
    adapter bundle folder, and any base model reference :func:`tunelab.models.resolve_model`
    accepts (a model folder, a hub id), as kind ``folder`` or ``local``.
    """
    from tunelab.registry.aliases import DEFAULT, aliased_version, is_alias
    from tunelab.registry.endpoints import pick_deployed
    from tunelab.registry.models import ModelNotRegistered, adapter_artifact, get_versions

    if not isinstance(ref, str) or not ref or (len(ref) > MAX_REF_LENGTH and not allow_folder):
        raise ModelNotFound("a model reference must be a non-empty name of at most 140 characters")
    version: ModelVersion | None = None
    if ENDPOINT_ID.match(ref):
        version = pick_deployed(services.db, ref)  # by the endpoint's traffic split
        if version is None:
            raise ModelNotFound(f"endpoint {ref!r} has no deployed model")
    elif ref in servable_base_names():
        return ModelTarget(ref=ref, kind="base", base_model=ref)
    elif "@checkpoint-" in ref:
        return _checkpoint_target(services, ref)
    else:
        name, at, number = ref.partition("@")
        if is_model_name(name) and (not at or number.isdigit()):
            try:
                versions = get_versions(services.db, name)
            except ModelNotRegistered:
                versions = []
            if versions and not at:  # what `name` means: its default alias
                version = aliased_version(services.db, name, DEFAULT) or versions[-1]
            elif versions:
                version = next((v for v in versions if v.version == int(number)), None)
                if version is None:
                    raise ModelNotFound(
                        f"tuned model {name!r} has no version {number} "
                        f"(has {[v.version for v in versions]})"
                    )
        elif is_model_name(name) and at and is_alias(number):  # name@alias
            version = aliased_version(services.db, name, number)
            if version is None and _has_versions(services, name):
                raise ModelNotFound(f"tuned model {name!r} has no alias {number!r}")
    if version is not None:
        folder = services.artifacts.local_path(adapter_artifact(services.db, version).uri)
        return ModelTarget(
            ref=ref,
            kind="tuned",
            base_model=version.base_model,
            version=version,
            adapter_dir=Path(folder),
        )
    if allow_folder:
        from tunelab.bundle import MANIFEST, read_tuning_config

        folder = Path(ref).expanduser()
        if (folder / MANIFEST).is_file():
            base = read_tuning_config(folder).get("base_model", "")
            return ModelTarget(ref=ref, kind="folder", base_model=base, adapter_dir=folder)
        return ModelTarget(ref=ref, kind="local", base_model=ref)
    raise ModelNotFound(not_found_message(ref))


def _checkpoint_target(services: Services, ref: str) -> ModelTarget:
    """``name@checkpoint-STEP``: the kept checkpoint at STEP of the job that made ``name``'s
    latest version."""
    from tunelab.registry.checkpoints import CHECKPOINT_REF, CheckpointNotFound, find
    from tunelab.registry.models import ModelNotRegistered, get_version

    match = CHECKPOINT_REF.match(ref)
    if match is None or not is_model_name(match["name"]):
        raise ModelNotFound(not_found_message(ref))
    try:
        version = get_version(services.db, match["name"])
        checkpoint = find(services.db, version, int(match["step"]))
    except ModelNotRegistered:
        raise ModelNotFound(not_found_message(ref)) from None
    except CheckpointNotFound as exc:
        raise ModelNotFound(str(exc)) from None
    return ModelTarget(
        ref=ref,
        kind="tuned",
        base_model=version.base_model,
        version=version,
        adapter_dir=Path(services.artifacts.local_path(checkpoint.adapter["uri"])),
        checkpoint_step=checkpoint.step,
    )


def not_found_message(ref: str) -> str:
    shown = ref if len(ref) <= MAX_REF_LENGTH else ref[:MAX_REF_LENGTH] + "…"
    bases = ", ".join(sorted(servable_base_names()))
    return (
        f"no model named {shown!r}: name a tuned model (name, name@version, name@alias or "
        "name@checkpoint-STEP), a deployed "
        f"endpoint id, or a base model this server serves ({bases})"
    )


def base_folder(target: ModelTarget) -> Path:
    """The folder of the target's base model (converting the catalog default once).

    A base named by a request is a servable name; a tuned model's base is what its job was
    tuned from, a reference the system stored (a servable name, or the operator's folder or hub
    id). Failures are logged in full and raised as :class:`ModelNotFound` without paths.
    """
    from tunelab.models.catalog import ModelNotFoundError, UnsafeModelError, resolve_model

    ref = target.base_model
    if target.kind == "local":  # the operator's own reference: their errors, with paths
        return resolve_model(ref).path
    try:
        if target.kind == "base" or ref in servable_base_names():
            return resolve_model(ref).path
        if target.adapter_dir is not None:
            from tunelab.bundle import read_tuning_config

            stored = read_tuning_config(target.adapter_dir).get("base_model_path")
            if stored and (Path(stored) / "config.json").is_file():
                return Path(stored)
        return resolve_model(ref).path
    except (ModelNotFoundError, UnsafeModelError, OSError, ValueError) as exc:
        logger.warning("base model of %s cannot be loaded: %s", target.ref, exc)
        raise ModelNotFound(
            f"the base model of {target.ref!r} is not available on this server; the operator "
            "can make it servable with `tunelab models add-base`"
        ) from None


def resolve_base_name(ref: str) -> Path:
    """The folder of a base model named in a request (dataset validation, job configs): only
    a servable name, else :class:`ModelNotFound`."""
    if ref not in servable_base_names():
        bases = ", ".join(sorted(servable_base_names()))
        shown = ref if len(ref) <= MAX_REF_LENGTH else ref[:MAX_REF_LENGTH] + "…"
        raise ModelNotFound(f"no base model named {shown!r}; this server serves: {bases}")
    return base_folder(ModelTarget(ref=ref, kind="base", base_model=ref))


def check_request_config(services: Services, config) -> None:
    """Refuse a tuning config from a request that names a model the server must not load: its
    ``base_model`` must be a servable base (or a registered tuned model: continued tuning, which
    :func:`tunelab.registry.continuation.resolve_continuation` then accepts or refuses with a
    422), its ``init_adapter`` a registered tuned model. Raises :class:`ModelNotFound` naming
    the field."""
    base = getattr(config, "base_model", None)
    if base is not None and base not in servable_base_names() and not _is_tuned(services, base):
        bases = ", ".join(sorted(servable_base_names()))
        raise ModelNotFound(
            f"config.base_model: no base model named {base[:MAX_REF_LENGTH]!r}; this server "
            f"serves: {bases}"
        )
    init = getattr(config, "init_adapter", None)
    if init is not None:
        try:
            target = resolve(services, init)
        except ModelNotFound:
            target = None
        if target is None or target.kind != "tuned":
            raise ModelNotFound(
                f"config.init_adapter: no tuned model named {init[:MAX_REF_LENGTH]!r}"
            )


def _has_versions(services: Services, name: str) -> bool:
    from tunelab.registry.models import ModelNotRegistered, get_versions

    try:
        return bool(get_versions(services.db, name))
    except ModelNotRegistered:
        return False


def _is_tuned(services: Services, ref: str) -> bool:
    """Whether ``ref`` names a registered tuned model."""
    try:
        return resolve(services, ref).kind == "tuned"
    except ModelNotFound:
        return False

"""The model registry: tuned models, their versions, and the lineage that made them.

Tuning again under the same name adds a version. A version records its base model, adapter
artifact (with sha256), config, data statistics, metrics, evaluation and source job. Deleting a
version removes its adapter from the artifact store only when no other version uses the same
artifact.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select

from tunelab.db import Database
from tunelab.db.schema import (
    Artifact,
    LineageEdge,
    ModelAlias,
    ModelVersion,
    TunedModel,
)
from tunelab.registry.artifacts import ArtifactStore

logger = logging.getLogger(__name__)


class ModelNotRegistered(LookupError):
    pass


def register_version(
    db: Database,
    *,
    name: str,
    method: str,
    base_model: str,
    adapter_uri: str,
    adapter_sha256: str,
    adapter_size: int,
    config: dict[str, Any],
    data_stats: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    source_job_id: str | None,
    inputs: list[tuple[str, str, str]] = (),
    store: ArtifactStore | None = None,
) -> ModelVersion:
    """Add the next version of ``name``. ``inputs`` are lineage sources: (kind, id, relation).
    With ``store`` (where ``adapter_uri`` lives), whether vLLM can serve the adapter is checked
    and stored with the version; without, the first view checks it (:func:`vllm_verdict`).

    Idempotent per source job: a job retried after registering gets its version back.
    Raises :class:`tunelab.registry.names.InvalidModelName` for a name no tuned model may take.
    """
    from tunelab.registry.aliases import ensure_default
    from tunelab.registry.names import check_tuned_model_name

    check_tuned_model_name(name)
    vllm_check = None if store is None else _check_for_vllm(store, adapter_uri, method)
    with db.session() as s:
        if source_job_id is not None:
            existing = s.scalar(
                select(ModelVersion).where(ModelVersion.source_job_id == source_job_id)
            )
            if existing is not None:
                return existing
        if s.get(TunedModel, name) is None:
            s.add(TunedModel(name=name))
            s.flush()
        latest = s.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.model_name == name)
        )
        artifact = Artifact(
            id="art-" + uuid.uuid4().hex[:16],
            kind="adapter",
            uri=adapter_uri,
            sha256=adapter_sha256,
            size_bytes=adapter_size,
            job_id=source_job_id,
        )
        s.add(artifact)
        version = ModelVersion(
            id="mv-" + uuid.uuid4().hex[:16],
            model_name=name,
            version=(latest or 0) + 1,
            method=method,
            base_model=base_model,
            adapter_artifact_id=artifact.id,
            adapter_sha256=adapter_sha256,
            config=config,
            data_stats=data_stats,
            metrics=metrics,
            source_job_id=source_job_id,
            vllm_check=vllm_check,
        )
        s.add(version)
        s.flush()
        ensure_default(s, name, version.id)  # the first version is what `name` means
        if source_job_id is not None:
            s.add(
                LineageEdge(
                    src_kind="job",
                    src_id=source_job_id,
                    dst_kind="model_version",
                    dst_id=version.id,
                    relation="produced",
                )
            )
        for kind, src_id, relation in inputs:
            s.add(
                LineageEdge(
                    src_kind=kind,
                    src_id=src_id,
                    dst_kind="model_version",
                    dst_id=version.id,
                    relation=relation,
                )
            )
    return version


def add_lineage(db: Database, src: tuple[str, str], dst: tuple[str, str], relation: str) -> None:
    with db.session() as s:
        exists = s.scalar(
            select(LineageEdge.id).where(
                LineageEdge.src_kind == src[0],
                LineageEdge.src_id == src[1],
                LineageEdge.dst_kind == dst[0],
                LineageEdge.dst_id == dst[1],
            )
        )
        if exists is None:
            s.add(
                LineageEdge(
                    src_kind=src[0],
                    src_id=src[1],
                    dst_kind=dst[0],
                    dst_id=dst[1],
                    relation=relation,
                )
            )


@dataclass
class ModelSummary:
    name: str
    versions: int
    latest_version: int
    base_model: str
    method: str
    vllm: dict[str, Any] | None = None
    """The latest version's vLLM verdict (:func:`vllm_verdict`); None when not checked yet."""


def list_models(db: Database, store: ArtifactStore | None = None) -> list[ModelSummary]:
    """Every tuned model, by name, with its latest version's facts; with ``store``, a latest
    version registered before vLLM verdicts were stored is checked now."""
    with db.session() as s:
        rows = s.execute(
            select(ModelVersion.model_name, func.count(), func.max(ModelVersion.version))
            .group_by(ModelVersion.model_name)
            .order_by(ModelVersion.model_name)
        ).all()
        found = []
        for name, count, latest in rows:
            v = s.scalar(
                select(ModelVersion).where(
                    ModelVersion.model_name == name, ModelVersion.version == latest
                )
            )
            found.append((v, count))
    out = []
    for v, count in found:  # after the session: vllm_verdict may write its own
        verdict = v.vllm_check if store is None else vllm_verdict(db, store, v)
        out.append(ModelSummary(v.model_name, count, v.version, v.base_model, v.method, verdict))
    return out


def get_versions(db: Database, name: str) -> list[ModelVersion]:
    with db.session() as s:
        versions = list(
            s.scalars(
                select(ModelVersion)
                .where(ModelVersion.model_name == name)
                .order_by(ModelVersion.version)
            )
        )
    if not versions:
        raise ModelNotRegistered(f"no tuned model named {name!r}")
    return versions


def get_version(db: Database, name: str, version: int | None = None) -> ModelVersion:
    """A version of ``name``: ``version``, else the one ``name@3`` or ``name@alias`` names,
    else the ``default`` alias's version (the latest for a model registered before aliases)."""
    from tunelab.registry.aliases import DEFAULT, aliased_version, is_alias

    alias = None
    if version is None and "@" in name:
        name, _, v = name.rpartition("@")
        if v.isdigit():
            version = int(v)
        elif is_alias(v):
            alias = v
        else:
            raise ModelNotRegistered(
                f"{name}@{v}: after '@' comes a version number (name@3) or an alias (name@prod)"
            )
    versions = get_versions(db, name)
    if version is None:
        found = aliased_version(db, name, alias or DEFAULT)
        if found is not None:
            return found
        if alias is not None:
            raise ModelNotRegistered(
                f"tuned model {name!r} has no alias {alias!r} "
                f"(set one with `tunelab models alias {name}@VERSION {alias}`)"
            )
        return versions[-1]
    for v in versions:
        if v.version == version:
            return v
    raise ModelNotRegistered(
        f"tuned model {name!r} has no version {version} (has {[v.version for v in versions]})"
    )


def adapter_artifact(db: Database, version: ModelVersion) -> Artifact:
    with db.session() as s:
        return s.get(Artifact, version.adapter_artifact_id)


def vllm_verdict(db: Database, store: ArtifactStore, version: ModelVersion) -> dict[str, Any]:
    """Whether vLLM can serve ``version``'s adapter, and why not, by the rules no server setting
    changes (``tunelab.serving.vllm_compat``): as stored at registration, else checked now and
    stored (a version registered before the verdict was kept)."""
    if version.vllm_check is not None:
        return version.vllm_check
    uri = adapter_artifact(db, version).uri
    verdict = _check_for_vllm(store, uri, version.method)
    if verdict is None:  # the store did not answer: say so, and check again next time
        return {
            "servable": False,
            "reasons": ["the adapter could not be read from the artifact store to check it"],
            "rank": None,
            "min_max_lora_rank": None,
        }
    with db.session() as s:
        row = s.get(ModelVersion, version.id)
        if row is not None:
            row.vllm_check = verdict
    version.vllm_check = verdict
    return verdict


def _check_for_vllm(store: ArtifactStore, uri: str, method: str) -> dict[str, Any] | None:
    """The verdict for the adapter at ``uri``; None when the store cannot be read now (a
    remote store's outage must not be stored as the adapter's fault, nor fail a registration)."""
    from tunelab.serving.vllm_compat import check_adapter_folder

    try:
        folder = store.local_path(uri)
    except Exception:  # whatever the store's backend raises (fsspec: OSError, boto, ...)
        logger.warning("could not fetch %s to check it for vLLM", uri, exc_info=True)
        return None
    return check_adapter_folder(folder, method=method).as_dict()


def set_evaluation(db: Database, version_id: str, evaluation: dict[str, Any]) -> None:
    with db.session() as s:
        s.get(ModelVersion, version_id).evaluation = evaluation


def delete_version(
    db: Database, store: ArtifactStore, name: str, version: int | None = None
) -> list[int]:
    """Delete one version (or all of ``name`` when ``version`` is None); returns versions removed.

    An adapter artifact is removed from storage only if no remaining version references it.
    """
    from tunelab.registry.endpoints import undeploy_version_everywhere

    targets = get_versions(db, name) if version is None else [get_version(db, name, version)]
    to_remove: list[str] = []
    with db.session() as s:
        for v in targets:
            artifact = s.get(Artifact, v.adapter_artifact_id)
            undeploy_version_everywhere(s, v.id)  # its endpoint's traffic goes to the others
            s.query(ModelAlias).filter(ModelAlias.model_version_id == v.id).delete()
            s.delete(s.get(ModelVersion, v.id))
            s.flush()
            still_used = s.scalar(
                select(func.count())
                .select_from(ModelVersion)
                .join(Artifact, ModelVersion.adapter_artifact_id == Artifact.id)
                .where(or_(Artifact.uri == artifact.uri, Artifact.id == artifact.id))
            )
            if not still_used:
                to_remove.append(artifact.uri)
                s.delete(artifact)
        remaining = s.scalar(
            select(func.count()).select_from(ModelVersion).where(ModelVersion.model_name == name)
        )
        if remaining:  # the default version was deleted: `name` means the latest one left
            from tunelab.registry.aliases import ensure_default

            latest = s.scalar(
                select(ModelVersion.id)
                .where(ModelVersion.model_name == name)
                .order_by(ModelVersion.version.desc())
            )
            ensure_default(s, name, latest)
        else:
            model = s.get(TunedModel, name)
            if model is not None:
                s.delete(model)
    for (
        uri
    ) in to_remove:  # after the commit: a failed delete leaves an orphan file, never a dangling row
        store.delete(uri)
    return [v.version for v in targets]


def upstream(db: Database, kind: str, node_id: str) -> list[LineageEdge]:
    """Everything ``kind:node_id`` was made from, transitively (e.g. model -> job -> datasets)."""
    return _walk(db, kind, node_id, reverse=True)


def downstream(db: Database, kind: str, node_id: str) -> list[LineageEdge]:
    """Everything made from ``kind:node_id``, transitively (e.g. dataset -> jobs -> models)."""
    return _walk(db, kind, node_id, reverse=False)


def _walk(db: Database, kind: str, node_id: str, reverse: bool) -> list[LineageEdge]:
    seen: set[tuple[str, str]] = set()
    frontier = [(kind, node_id)]
    edges: list[LineageEdge] = []
    with db.session() as s:
        while frontier:
            k, i = frontier.pop()
            if (k, i) in seen:
                continue
            seen.add((k, i))
            if reverse:
                found = s.scalars(
                    select(LineageEdge).where(LineageEdge.dst_kind == k, LineageEdge.dst_id == i)
                )
            else:
                found = s.scalars(
                    select(LineageEdge).where(LineageEdge.src_kind == k, LineageEdge.src_id == i)
                )
            for e in found:
                edges.append(e)
                frontier.append((e.src_kind, e.src_id) if reverse else (e.dst_kind, e.dst_id))
    return edges


def version_refs(db: Database, version_ids: set[str]) -> dict[str, str]:
    """``name@version`` of each model version id (ids of deleted versions are left out), so
    lineage can name a parent model rather than show its id."""
    if not version_ids:
        return {}
    with db.session() as s:
        rows = s.execute(
            select(ModelVersion.id, ModelVersion.model_name, ModelVersion.version).where(
                ModelVersion.id.in_(version_ids)
            )
        ).all()
    return {i: f"{name}@{v}" for i, name, v in rows}

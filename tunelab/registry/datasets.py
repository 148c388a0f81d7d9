"""Dataset versions: a file's bytes, identified by sha256 and stored once in the artifact store."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tunelab.bundle import sha256_file
from tunelab.db import Database
from tunelab.db.schema import Dataset
from tunelab.registry.artifacts import ArtifactStore


def register_dataset(db: Database, store: ArtifactStore, path: Path) -> Dataset:
    """Store ``path`` (if these bytes are new) and return its dataset version."""
    digest = sha256_file(path)
    with db.session() as s:
        existing = s.scalar(select(Dataset).where(Dataset.sha256 == digest))
        if existing is not None:
            return existing
    stored = store.put_file(path, f"datasets/{digest}.jsonl")
    dataset = Dataset(
        id=f"ds-{digest[:16]}",
        sha256=digest,
        uri=stored.uri,
        filename=path.name[:255],
        size_bytes=stored.size_bytes,
    )
    try:
        with db.session() as s:
            s.add(dataset)
    except IntegrityError:  # registered meanwhile by a concurrent submission
        with db.session() as s:
            return s.scalar(select(Dataset).where(Dataset.sha256 == digest))
    return dataset


def get_dataset(db: Database, dataset_id: str) -> Dataset | None:
    with db.session() as s:
        return s.get(Dataset, dataset_id)


def list_datasets(db: Database) -> list[Dataset]:
    with db.session() as s:
        return list(s.scalars(select(Dataset).order_by(Dataset.created_at.desc())))

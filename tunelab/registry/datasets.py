"""Dataset versions: a file's bytes, identified by sha256 and stored once in the artifact store."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from tunelab.bundle import sha256_file
from tunelab.db import Database
from tunelab.db.schema import Dataset, LineageEdge, TuningJob
from tunelab.registry.artifacts import ArtifactStore


def register_dataset(
    db: Database, store: ArtifactStore, path: Path, filename: str | None = None
) -> Dataset:
    """Store ``path`` (if these bytes are new) and return its dataset version. ``filename`` is
    the name to show (an upload's own name; display only); by default the path's."""
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
        filename=(filename or path.name)[:255],
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


class DatasetInUse(RuntimeError):
    """Unfinished jobs still read the dataset (a resumed job reads its data again)."""


def delete_dataset(db: Database, store: ArtifactStore, dataset_id: str) -> bool:
    """Delete a dataset and its bytes; False if there is none. Refused while a job that is not
    finished uses it. Finished jobs and lineage keep its id (the history of what was used)."""
    from tunelab.jobs.states import TERMINAL

    with db.session() as s:
        dataset = s.get(Dataset, dataset_id)
        if dataset is None:
            return False
        job_ids = s.scalars(
            select(LineageEdge.dst_id).where(
                LineageEdge.src_kind == "dataset",
                LineageEdge.src_id == dataset_id,
                LineageEdge.dst_kind == "job",
            )
        ).all()
        busy = s.scalars(
            select(TuningJob.id).where(
                TuningJob.id.in_(job_ids), TuningJob.state.not_in([str(t) for t in TERMINAL])
            )
        ).all()
        if busy:
            raise DatasetInUse(
                f"dataset {dataset_id} is used by unfinished job(s) {', '.join(sorted(busy))}; "
                "cancel them or wait until they end"
            )
        uri = dataset.uri
        s.execute(delete(Dataset).where(Dataset.id == dataset_id))
    store.delete(uri)  # after the commit: a failed delete leaves an orphan file, not a bad row
    return True

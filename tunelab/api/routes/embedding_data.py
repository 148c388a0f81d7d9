"""Checking an embedding-tuning data set before a job is submitted: corpus, queries and labels
are read together (labels name ids in the other two), every bad line reported with its dataset
role, line and field. The Studio's form shows it; the job's validate step runs the same reader.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from tunelab.api.deps import ServicesDep
from tunelab.api.errors import ApiError
from tunelab.registry.datasets import get_dataset

router = APIRouter(prefix="/v1/embeddingData", tags=["datasets"])
ROLES = ("corpus", "queries", "train_labels", "test_labels", "validation_labels")


@router.get("/validation")
def validate(
    services: ServicesDep,
    corpus: str = Query(..., max_length=40),
    queries: str = Query(..., max_length=40),
    train_labels: str = Query(..., max_length=40),
    test_labels: str | None = Query(None, max_length=40),
    validation_labels: str | None = Query(None, max_length=40),
) -> dict:
    from tunelab.embeddings.data import EmbeddingDataError, load_embedding_data

    given = dict(
        corpus=corpus,
        queries=queries,
        train_labels=train_labels,
        test_labels=test_labels,
        validation_labels=validation_labels,
    )
    paths, role_of = {}, {}
    for role, dataset_id in given.items():
        if dataset_id is None:
            paths[role] = None
            continue
        dataset = get_dataset(services.db, dataset_id)
        if dataset is None:
            raise ApiError(404, "not_found", f"{role}: no dataset {dataset_id!r}", {"field": role})
        paths[role] = services.artifacts.local_path(dataset.uri)
        role_of.setdefault(str(paths[role]), role)
    try:
        data = load_embedding_data(**paths)
    except EmbeddingDataError as exc:
        errors = [
            {
                "role": role_of.get(e.file, e.file),
                "line": e.line,
                "code": e.code,
                "field": e.field,
                "message": e.message,
            }
            for e in exc.errors
        ]
        return {"ok": False, "error_count": len(errors), "errors": errors, "stats": None}
    stats = data.stats()
    stats.pop("sha256", None)
    return {"ok": True, "error_count": 0, "errors": [], "stats": stats}

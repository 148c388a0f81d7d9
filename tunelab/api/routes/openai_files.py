"""OpenAI's Files API for fine-tuning data: a file is a TuneLab dataset (same id, same bytes,
content-addressed), so a file uploaded here is a dataset of the Vertex-style API too."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import FileResponse

from tunelab.api.deps import ServicesDep
from tunelab.api.openai_errors import OpenAIError, OpenAIRoute
from tunelab.api.openai_views import file_object, files_page
from tunelab.api.uploads import register_upload
from tunelab.registry.datasets import DatasetInUse, delete_dataset, get_dataset

router = APIRouter(prefix="/v1/files", tags=["openai files"], route_class=OpenAIRoute)


@router.post("")
async def create(services: ServicesDep, file: UploadFile, purpose: str = Form(...)) -> dict:
    """Upload a JSONL file (``purpose="fine-tune"``); the same bytes give the same file id."""
    if purpose != "fine-tune":
        raise OpenAIError(
            400,
            "unsupported_purpose",
            f"purpose {purpose[:40]!r} is not supported; TuneLab stores files for 'fine-tune'",
            "purpose",
        )
    dataset = await register_upload(
        services,
        file,
        refuse_empty=lambda: OpenAIError(400, "empty_file", "the uploaded file is empty", "file"),
    )
    return file_object(dataset)


@router.get("")
def list_(
    services: ServicesDep,
    purpose: str | None = Query(None, max_length=32),
    after: str | None = Query(None, max_length=64),
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
) -> dict:
    if purpose not in (None, "fine-tune"):
        return {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    return files_page(services.db, after, limit, order)


def _dataset(services, file_id: str):
    dataset = get_dataset(services.db, file_id) if len(file_id) <= 40 else None
    if dataset is None:
        raise OpenAIError(404, "file_not_found", f"No such File object: {file_id[:64]}", "id")
    return dataset


@router.get("/{file_id}")
def retrieve(file_id: str, services: ServicesDep) -> dict:
    return file_object(_dataset(services, file_id))


@router.get("/{file_id}/content")
def content(file_id: str, services: ServicesDep) -> FileResponse:
    dataset = _dataset(services, file_id)
    return FileResponse(
        services.artifacts.local_path(dataset.uri),
        media_type="application/jsonl",
        filename=dataset.filename,
    )


@router.delete("/{file_id}")
def delete(file_id: str, services: ServicesDep) -> dict:
    _dataset(services, file_id)
    try:
        deleted = delete_dataset(services.db, services.artifacts, file_id)
    except DatasetInUse as exc:
        raise OpenAIError(409, "file_in_use", str(exc), "id") from None
    return {"id": file_id, "object": "file", "deleted": deleted}

"""Exporting a tuned model (``POST /v1/tunedModels/{name}:export``) and downloading the
archive the server made (``GET /v1/exports/{id}``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from tunelab.api.deps import ServicesDep
from tunelab.api.errors import ApiError

router = APIRouter(tags=["tuned models"])


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["peft", "merged", "gguf", "gguf-lora"] = Field(
        ...,
        description="peft, merged (sentence-transformers for embedding models), gguf, gguf-lora",
    )
    quantization: Literal["f16", "q8_0"] | None = Field(
        None, description="GGUF formats only (default f16)."
    )
    version: int | None = Field(None, ge=1, description="Default: the latest version.")


def _public(record) -> dict:
    view = asdict(record)
    view.pop("uri")  # where the server keeps it is not the client's business
    return view | {"download_url": f"/v1/exports/{record.id}"}


@router.post("/v1/tunedModels/{name}:export")
def export(name: str, body: ExportRequest, services: ServicesDep) -> dict:
    """Runs the export now (seconds for small models, a minute or more for GGUF of larger ones)
    and answers with the archive's id, size, sha256 and download URL."""
    from tunelab.export import ExportError
    from tunelab.export.archive import create_export
    from tunelab.registry.models import ModelNotRegistered

    ref = f"{name}@{body.version}" if body.version else name
    try:
        record = create_export(services, ref, body.format, body.quantization)
    except ModelNotRegistered as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except ExportError as exc:
        raise ApiError(400, "export_not_possible", str(exc)) from None
    return _public(record)


@router.get("/v1/exports/{export_id}")
def download(export_id: str, services: ServicesDep) -> FileResponse:
    from tunelab.export.archive import ExportNotFound, get_export

    try:
        record, path = get_export(services, export_id)
    except ExportNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return FileResponse(path, media_type="application/x-tar", filename=record.filename)

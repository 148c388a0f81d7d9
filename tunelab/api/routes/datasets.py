"""Datasets: upload (streamed to disk, size-limited), list, get, validate (as supervised data,
preference pairs or prompts)."""

from __future__ import annotations

from fastapi import APIRouter, Query, UploadFile

from tunelab.api.deps import ServicesDep
from tunelab.api.errors import ApiError
from tunelab.api.uploads import register_upload
from tunelab.config import DEFAULT_BASE_MODEL
from tunelab.registry.datasets import get_dataset, list_datasets

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def dataset_view(d) -> dict:
    return {
        "id": d.id,
        "sha256": d.sha256,
        "filename": d.filename,
        "size_bytes": d.size_bytes,
        "create_time": d.created_at,
    }


@router.post("", status_code=201)
async def upload(file: UploadFile, services: ServicesDep) -> dict:
    """Store a JSONL file; the same bytes always give the same dataset id."""
    # The client's name is recorded for display (the Studio's View code names the file by it),
    # as OpenAI's /v1/files does.
    dataset = await register_upload(services, file)
    view = dataset_view(dataset)
    if file.filename:
        view["filename"] = file.filename[:255]
    return view


@router.get("")
def list_(services: ServicesDep) -> dict:
    return {"datasets": [dataset_view(d) for d in list_datasets(services.db)]}


def _get(services, dataset_id: str):
    dataset = get_dataset(services.db, dataset_id)
    if dataset is None:
        raise ApiError(404, "not_found", f"no dataset {dataset_id!r}")
    return dataset


@router.get("/{dataset_id}")
def get(dataset_id: str, services: ServicesDep) -> dict:
    return dataset_view(_get(services, dataset_id))


KINDS = ("supervised", "preference", "prompts")
"""What a dataset is read as: supervised examples (SFT), preference pairs (RLHF's reward model,
DPO), or prompts (RLHF's reinforcement learning and evaluation prompts)."""


@router.get("/{dataset_id}/validation")
def validate(
    dataset_id: str,
    services: ServicesDep,
    kind: str = Query("supervised", max_length=32, description=" | ".join(KINDS)),
    base_model: str = Query(DEFAULT_BASE_MODEL, max_length=512),
    max_seq_length: int = Query(1024, ge=16, le=131072, description="supervised only"),
    epochs: int = Query(1, ge=1, le=1000, description="supervised only"),
    prompt_sequence_length: int = Query(512, ge=8, le=131072, description="preference, prompts"),
    target_sequence_length: int = Query(512, ge=1, le=131072, description="preference only"),
    instruction: str | None = Query(None, max_length=10_000, description="preference, prompts"),
    purpose: str = Query(
        "train",
        pattern="^(train|validation)$",
        description="train, or validation (a held-out set: no advice on its size)",
    ),
) -> dict:
    """The validation report: every bad line with its number, then token statistics. ``kind``
    says how the file is read; the limits that apply are those of the method that reads it."""
    from tunelab.data.preference import validate_preference_file, validate_prompt_file
    from tunelab.data.validation import validate_file
    from tunelab.models import load_tokenizer
    from tunelab.registry.resolve import ModelNotFound, resolve_base_name

    if kind not in KINDS:
        raise ApiError(
            422,
            "invalid_request",
            f"kind: unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}",
            {"field": "kind"},
        )
    dataset = _get(services, dataset_id)
    try:  # a servable base model's name only: a request never names a folder or a hub id
        tokenizer = load_tokenizer(resolve_base_name(base_model))
    except ModelNotFound as exc:
        raise ApiError(404, "model_not_found", str(exc), {"field": "base_model"}) from None
    path = services.artifacts.local_path(dataset.uri)
    prompt_kw = dict(prompt_sequence_length=prompt_sequence_length, instruction=instruction)
    if kind == "preference":
        report = validate_preference_file(
            path, tokenizer, target_sequence_length=target_sequence_length, **prompt_kw
        )
    elif kind == "prompts":
        report = validate_prompt_file(path, tokenizer, **prompt_kw)
    else:
        report = validate_file(path, tokenizer, max_seq_length=max_seq_length, epochs=epochs)
    report.path, report.tokenizer = dataset.filename, base_model  # names, never server paths
    if purpose == "validation":
        report.drop_size_advice()
    return report.to_dict()


@router.get("/{dataset_id}/preview")
def preview(
    dataset_id: str,
    services: ServicesDep,
    base_model: str = Query(DEFAULT_BASE_MODEL, max_length=512),
    rows: int = Query(5, ge=1, le=20),
) -> dict:
    """The first supervised examples rendered through the base model's chat template, with the
    trained (model-turn) character spans: what the model will see."""
    from tunelab.data.preview import preview_file
    from tunelab.models import load_tokenizer
    from tunelab.registry.resolve import ModelNotFound, resolve_base_name

    dataset = _get(services, dataset_id)
    try:  # a servable base model's name only: a request never names a folder or a hub id
        tokenizer = load_tokenizer(resolve_base_name(base_model))
    except ModelNotFound as exc:
        raise ApiError(404, "model_not_found", str(exc), {"field": "base_model"}) from None
    path = services.artifacts.local_path(dataset.uri)
    return {"base_model": base_model, "rows": preview_file(path, tokenizer, rows)}

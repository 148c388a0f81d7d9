"""Embeddings over HTTP: OpenAI-compatible ``POST /v1/embeddings``, and the Vertex-style answer
that ``POST /v1/endpoints/{endpoint}:predict`` gives when the endpoint is an embedding model
(``instances`` of ``{"content", "task_type"?, "title"?}`` -> ``embeddings.values``)."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from fastapi import APIRouter, Request

from tunelab.api.errors import ApiError
from tunelab.api.openai_schemas import EmbeddingRequest

router = APIRouter(prefix="/v1", tags=["embeddings"])


async def _target(request: Request, name: str):
    from tunelab.embeddings.serving import embedding_target
    from tunelab.serving.pool import ModelNotAvailable

    pool = request.app.state.inference
    try:
        target = await asyncio.to_thread(embedding_target, pool, name)
    except ModelNotAvailable as exc:  # a tuned embedding model that is not deployed
        raise ApiError(404, "model_not_found", str(exc), {"param": "model"}) from None
    if target is None:
        raise ApiError(
            404, "model_not_found", f"{name!r} is not an embedding model", {"param": "model"}
        )
    return target


async def _embed(target, texts: list[str], param: str, **options):
    from tunelab.embeddings.serving import InvalidEmbeddingRequest, embed

    try:
        return await asyncio.to_thread(embed, target, texts, **options)
    except InvalidEmbeddingRequest as exc:
        raise ApiError(400, "invalid_request", str(exc), {"param": param}) from None


@router.post("/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    target = await _target(request, body.model)
    results = await _embed(target, texts, "input", dimensions=body.dimensions)
    data = []
    for i, r in enumerate(results):
        vector: Any = r.values
        if body.encoding_format == "base64":  # little-endian float32, as OpenAI encodes it
            vector = base64.b64encode(struct.pack(f"<{len(r.values)}f", *r.values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(r.token_count for r in results)
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def vertex_predictions(target, instances, parameters) -> dict[str, Any]:
    """The :predict answer of an embedding model, as Vertex's text-embedding models give it."""
    texts, task_types, titles = [], [], []
    for i, instance in enumerate(instances):
        text = instance.content if instance.content is not None else instance.prompt
        if text is None or instance.messages:
            raise ApiError(
                400,
                "invalid_request",
                f"instances[{i}]: an embedding instance needs content",
                {"param": f"instances[{i}].content"},
            )
        texts.append(text)
        task_types.append(instance.task_type)
        titles.append(instance.title)
    results = await _embed(
        target,
        texts,
        "instances",
        task_types=task_types,
        titles=titles,
        dimensions=getattr(parameters, "outputDimensionality", None),
        auto_truncate=getattr(parameters, "autoTruncate", True),
    )
    return {
        "predictions": [
            {
                "embeddings": {
                    "values": r.values,
                    "statistics": {"token_count": r.token_count, "truncated": r.truncated},
                }
            }
            for r in results
        ],
        "deployedModelId": target.model_id,
        "metadata": {"billableCharacterCount": sum(len(t) for t in texts)},
    }

"""Vertex-style prediction: ``POST /v1/endpoints/{endpoint}:predict`` with ``instances`` (a
``prompt``, or chat ``messages`` with an optional ``context``) and ``parameters``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from tunelab.api.errors import ApiError
from tunelab.serving.generation import GenerationParams

router = APIRouter(prefix="/v1/endpoints", tags=["prediction"])


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    author: str | None = Field(None, max_length=32, description="Vertex chat name for the role.")
    role: str | None = Field(None, max_length=32)
    content: str = Field(..., max_length=1_000_000)


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, max_length=1_000_000)
    content: str | None = Field(None, max_length=1_000_000, description="Alias of prompt.")
    messages: list[Message] | None = Field(None, max_length=1000)
    context: str | None = Field(None, max_length=1_000_000, description="System instruction.")
    # Embedding models (tunelab/api/routes/embeddings.py): Vertex's task type and document title.
    task_type: str | None = Field(None, max_length=32)
    title: str | None = Field(None, max_length=100_000)


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    temperature: float = Field(0.2, ge=0, le=2)
    maxOutputTokens: int = Field(256, ge=1, le=8192)
    topP: float = Field(0.8, gt=0, le=1)
    topK: int = Field(40, ge=0, le=1000)
    candidateCount: int = Field(1, ge=1, le=8)
    stopSequences: list[str] = Field(default_factory=list, max_length=16)
    seed: int | None = None
    # Embedding models only: truncate vectors to this size; refuse over-long inputs if false.
    outputDimensionality: int | None = Field(None, ge=1, le=8192)
    autoTruncate: bool = True


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Instance] = Field(..., min_length=1, max_length=64)
    parameters: Parameters = Field(default_factory=Parameters)


def instance_messages(instance: Instance) -> tuple[list[dict[str, str]], bool]:
    """(messages, is_chat). A prompt is one user turn, exactly as ``input_text`` in training."""
    system = [{"role": "system", "content": instance.context}] if instance.context else []
    if instance.messages:
        roles = {
            "user": "user",
            "model": "assistant",
            "assistant": "assistant",
            "bot": "assistant",
            "system": "system",
        }
        out = []
        for i, m in enumerate(instance.messages):
            who = (m.role or m.author or ("user" if i % 2 == 0 else "model")).lower()
            if who not in roles:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"instances.messages[{i}]: unknown role {who!r}",
                    {"allowed": sorted(roles)},
                )
            out.append({"role": roles[who], "content": m.content})
        return system + out, True
    text = instance.prompt if instance.prompt is not None else instance.content
    if text is None:
        raise ApiError(
            422, "invalid_request", "each instance needs a prompt (or content) or messages"
        )
    return system + [{"role": "user", "content": text}], False


@router.post("/{endpoint}:predict")
async def predict(endpoint: str, body: PredictRequest, request: Request) -> dict[str, Any]:
    from tunelab.serving.engine import GenerationRequest
    from tunelab.serving.pool import ModelNotAvailable

    pool = request.app.state.inference
    # An embedding model answers with vectors, not text (tunelab/api/routes/embeddings.py).
    embedding = await asyncio.to_thread(pool.embedding_target, endpoint)
    if embedding is not None:
        from tunelab.api.routes.embeddings import vertex_predictions

        return await vertex_predictions(embedding, body.instances, body.parameters)
    try:
        target = await asyncio.to_thread(pool.endpoint_target, endpoint)
    except ModelNotAvailable as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    p = body.parameters
    params = GenerationParams(
        temperature=p.temperature,
        top_p=p.topP,
        top_k=p.topK,
        max_output_tokens=p.maxOutputTokens,
        seed=p.seed,
    )
    futures, chats = [], []
    for instance in body.instances:
        messages, is_chat = instance_messages(instance)
        chats.append(is_chat)
        futures.append(
            target.engine.submit(
                GenerationRequest(
                    messages=messages,
                    adapter=target.adapter,
                    params=params,
                    stop_sequences=p.stopSequences,
                    candidate_count=p.candidateCount,
                )
            )
        )
    results = [await asyncio.wrap_future(f) for f in futures]
    predictions = []
    for result, is_chat in zip(results, chats, strict=True):
        candidates = [
            {"author": "model", "content": t} if is_chat else {"content": t} for t in result.texts
        ]
        prediction: dict[str, Any] = {"candidates": candidates}
        if not is_chat:
            prediction["content"] = result.texts[0]
        predictions.append(prediction)
    return {
        "predictions": predictions,
        "deployedModelId": target.adapter[0] if target.adapter else target.base_model,
        "metadata": {
            "tokenMetadata": {
                "inputTokenCount": {"totalTokens": sum(r.prompt_tokens for r in results)},
                "outputTokenCount": {"totalTokens": sum(r.completion_tokens for r in results)},
            }
        },
    }

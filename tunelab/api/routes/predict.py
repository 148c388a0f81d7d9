"""Vertex-style prediction: ``POST /v1/endpoints/{endpoint}:predict``, also at Vertex's resource
paths (``/v1/projects/{p}/locations/{l}/endpoints/{endpoint}:predict`` and the publisher-model
path), with ``instances`` (a ``prompt``, or chat ``messages`` with an optional ``context`` and
``examples``) and ``parameters``. Bodies are in tunelab/api/vertex_schemas.py; errors are in
Google's shape (tunelab/api/errors.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from tunelab.api.errors import ApiError
from tunelab.api.inference import check_name, generate_all
from tunelab.api.vertex_schemas import Instance, PredictRequest
from tunelab.serving.generation import GenerationParams

router = APIRouter(prefix="/v1", tags=["prediction"])

_ROLES = {
    "user": "user",
    "model": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "system": "system",
}


def instance_messages(instance: Instance, index: int = 0) -> tuple[list[dict[str, str]], bool]:
    """(messages, is_chat). A prompt is one user turn, exactly as ``input_text`` in training; a
    chat instance is its context (the system turn), its examples (user/model exchanges before
    the conversation, as Vertex's chat models read them), then its messages."""
    where = f"instances[{index}]"
    system = [{"role": "system", "content": instance.context}] if instance.context else []
    if instance.messages:
        examples = []
        for ex in instance.examples or []:
            examples += [
                {"role": "user", "content": ex.input.content},
                {"role": "assistant", "content": ex.output.content},
            ]
        out = []
        for i, m in enumerate(instance.messages):
            who = (m.role or m.author or ("user" if i % 2 == 0 else "model")).lower()
            if who not in _ROLES:
                raise ApiError(
                    400,
                    "invalid_request",
                    f"{where}.messages[{i}]: unknown role {who!r}",
                    {"allowed": sorted(_ROLES), "param": f"{where}.messages[{i}].author"},
                )
            out.append({"role": _ROLES[who], "content": m.content})
        return system + examples + out, True
    if instance.examples:
        raise ApiError(
            400,
            "invalid_request",
            f"{where}.examples: examples belong to a chat instance (give messages)",
            {"param": f"{where}.examples"},
        )
    text = instance.prompt if instance.prompt is not None else instance.content
    if text is None:
        raise ApiError(
            400,
            "invalid_request",
            f"{where}: each instance needs a prompt (or content) or messages",
            {"param": f"{where}.prompt"},
        )
    return system + [{"role": "user", "content": text}], False


@router.post("/endpoints/{endpoint}:predict")
async def predict(endpoint: str, body: PredictRequest, request: Request) -> dict[str, Any]:
    return await _predict(endpoint, body, request)


@router.post("/projects/{project}/locations/{location}/endpoints/{endpoint}:predict")
async def predict_resource(
    project: str, location: str, endpoint: str, body: PredictRequest, request: Request
) -> dict[str, Any]:
    """Vertex's resource path; the project and location name this server."""
    return await _predict(endpoint, body, request)


@router.post(
    "/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}:predict"
)
async def predict_publisher_model(
    project: str, location: str, publisher: str, model: str, body: PredictRequest, request: Request
) -> dict[str, Any]:
    """A model by name (``TextGenerationModel.from_pretrained``'s path); the publisher is any."""
    return await _predict(model, body, request)


async def _predict(endpoint: str, body: PredictRequest, request: Request) -> dict[str, Any]:
    from tunelab.serving.engine import GenerationRequest
    from tunelab.serving.pool import ModelNotAvailable

    check_name(endpoint, "endpoint")
    pool = request.app.state.inference
    # An embedding model answers with vectors, not text (tunelab/api/routes/embeddings.py).
    try:
        embedding = await asyncio.to_thread(pool.embedding_target, endpoint)
    except ModelNotAvailable as exc:  # a tuned embedding model that is not deployed
        raise ApiError(404, "not_found", str(exc)) from None
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
    requests, chats = [], []
    for i, instance in enumerate(body.instances):
        messages, is_chat = instance_messages(instance, i)
        chats.append(is_chat)
        requests.append(
            GenerationRequest(
                messages=messages,
                adapter=target.adapter,
                params=params,
                stop_sequences=p.stopSequences,
                candidate_count=p.candidateCount,
            )
        )
    results = await generate_all(target.engine, requests, param="instances")
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

"""OpenAI-compatible API: ``/v1/models`` (and ``/v1/models/{id}``), ``/v1/chat/completions`` and
``/v1/completions``, with streaming as server-sent events, so the official ``openai`` client
works unchanged. ``model`` is a base model or a tuned model name (``name`` or ``name@version``).

Request bodies are in tunelab/api/openai_schemas.py; errors are in OpenAI's shape
(tunelab/api/errors.py). A stream opens only once the engine has accepted the request; an error
after that is sent as a final ``{"error": ...}`` event, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunelab.api.errors import ApiError, shaped_error
from tunelab.api.inference import generate_all, open_stream, stream_deltas
from tunelab.api.openai_schemas import ChatCompletionRequest, CompletionRequest

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai-compatible"])


def _target(request: Request, model: str):
    from tunelab.serving.pool import ModelNotAvailable

    try:
        return request.app.state.inference.target(model)
    except ModelNotAvailable as exc:
        raise ApiError(404, "model_not_found", str(exc), {"param": "model"}) from None


def _model_entries(request: Request) -> list[dict[str, Any]]:
    now = int(time.time())
    return [
        {"id": name, "object": "model", "created": now, "owned_by": owner}
        for name, owner in request.app.state.inference.model_names()
    ]


@router.get("/models")
def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _model_entries(request)}


@router.get("/models/{model:path}")
def model(model: str, request: Request) -> dict[str, Any]:
    """One entry of ``/v1/models`` (``client.models.retrieve``); listing never loads a model."""
    for entry in _model_entries(request):
        if entry["id"] == model:
            return entry
    raise ApiError(404, "model_not_found", f"no model {model!r}", {"param": "model"})


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    from tunelab.serving.engine import GenerationRequest

    body.refuse_unimplemented()
    target = await asyncio.to_thread(_target, request, body.model)
    gen = GenerationRequest(
        messages=body.chat_messages(),
        adapter=target.adapter,
        params=body.params(),
        stop_sequences=body.stops(),
        candidate_count=body.n,
    )
    cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        out = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": choices,
        }
        if body.include_usage:  # OpenAI: null on every chunk but the last, which has no choices
            out["usage"] = usage
        return out

    if body.stream:
        stream = await open_stream(target.engine, gen, param="messages")
        return _sse_response(
            stream,
            first=chunk([_delta({"role": "assistant", "content": ""}, None)]),
            piece=lambda text: chunk([_delta({"content": text}, None)]),
            last=lambda result: chunk([_delta({}, result.finish_reasons[0])]),
            usage=(lambda result: chunk([], _usage([result]))) if body.include_usage else None,
        )
    (result,) = await generate_all(target.engine, [gen], param="messages")
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
            for i, (t, f) in enumerate(zip(result.texts, result.finish_reasons, strict=True))
        ],
        "usage": _usage([result]),
    }


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    from tunelab.serving.engine import GenerationRequest

    body.refuse_unimplemented()
    prompts = body.prompts()
    if body.stream and len(prompts) != 1:
        raise ApiError(
            400, "invalid_request", "prompt: streaming serves one prompt", {"param": "prompt"}
        )
    target = await asyncio.to_thread(_target, request, body.model)
    cid, created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())
    requests = [
        GenerationRequest(
            messages=[{"role": "user", "content": prompt}],
            adapter=target.adapter,
            params=body.params(),
            stop_sequences=body.stops(),
            candidate_count=body.n,
        )
        for prompt in prompts
    ]

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        out = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
        }
        if body.include_usage:
            out["usage"] = usage
        return out

    def choice(text: str, finish: str | None, index: int = 0) -> dict:
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}

    if body.stream:
        stream = await open_stream(target.engine, requests[0], param="prompt")
        return _sse_response(
            stream,
            first=None,
            piece=lambda text: chunk([choice(text, None)]),
            last=lambda result: chunk([choice("", result.finish_reasons[0])]),
            usage=(lambda result: chunk([], _usage([result]))) if body.include_usage else None,
        )
    results = await generate_all(target.engine, requests, param="prompt")
    choices = [
        choice(text, finish)
        for result in results
        for text, finish in zip(result.texts, result.finish_reasons, strict=True)
    ]
    for index, c in enumerate(choices):
        c["index"] = index
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": _usage(results),
    }


def _delta(delta: dict, finish: str | None) -> dict:
    return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}


def _usage(results: list) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse_response(
    stream,
    *,
    first: dict | None,
    piece: Callable[[str], dict],
    last: Callable[[Any], dict],
    usage: Callable[[Any], dict] | None,
) -> StreamingResponse:
    """Server-sent events: an optional opening chunk, one chunk per text delta, the chunk with
    the finish reason, the usage chunk when asked for, then ``[DONE]``."""

    async def events() -> AsyncIterator[str]:
        if first is not None:
            yield _sse(first)
        try:
            async for text in stream_deltas(stream):
                yield _sse(piece(text))
            result = stream.result.result()
        except Exception as exc:  # the status line is sent: the error goes in the stream
            logger.exception("generation failed mid-stream")
            _, error = shaped_error("openai", 500, "internal", f"generation failed: {exc}")
            yield _sse(error)
            return
        yield _sse(last(result))
        if usage is not None:
            yield _sse(usage(result))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"

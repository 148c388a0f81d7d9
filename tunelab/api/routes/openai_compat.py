"""OpenAI-compatible API: ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``, with
streaming as server-sent events, so the official ``openai`` client works unchanged. ``model`` is
a base model or a tuned model name (``name`` or ``name@version``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool

from tunelab.api.errors import ApiError
from tunelab.serving.generation import GenerationParams

router = APIRouter(prefix="/v1", tags=["openai-compatible"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] = Field(..., description="Text, or text parts.")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI options are accepted and ignored
    model: str = Field(..., min_length=1, max_length=140)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=1000, description="Extension: 0 disables.")
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None

    def params(self) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_output_tokens=self.max_completion_tokens or self.max_tokens or 256,
            seed=self.seed,
        )

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])[:16]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1000)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(
        ..., description="A prompt is one user turn, as input_text in training."
    )


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _target(request: Request, model: str):
    from tunelab.serving.pool import ModelNotAvailable

    try:
        return request.app.state.inference.target(model)
    except ModelNotAvailable as exc:
        raise ApiError(404, "model_not_found", str(exc)) from None


@router.get("/models")
def models(request: Request) -> dict[str, Any]:
    now = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": now, "owned_by": owner}
            for name, owner in request.app.state.inference.model_names()
        ],
    }


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    from tunelab.serving.engine import GenerationRequest

    target = await asyncio.to_thread(_target, request, body.model)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
        for m in body.messages
    ]
    gen = GenerationRequest(
        messages=messages,
        adapter=target.adapter,
        params=body.params(),
        stop_sequences=body.stops(),
        candidate_count=body.n,
    )
    cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
    if body.stream:
        if body.n != 1:
            raise ApiError(422, "invalid_request", "stream supports n=1 only")

        def chunk(delta: dict, finish: str | None) -> dict:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        async def events() -> AsyncIterator[str]:
            yield _sse(chunk({"role": "assistant", "content": ""}, None))
            async for piece in iterate_in_threadpool(target.engine.stream(gen)):
                if piece:
                    yield _sse(chunk({"content": piece}, None))
            yield _sse(chunk({}, "stop"))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    result = await asyncio.wrap_future(target.engine.submit(gen))
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
            for i, (t, f) in enumerate(zip(result.texts, result.finish_reasons, strict=True))
        ],
        "usage": _usage(result),
    }


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    from tunelab.serving.engine import GenerationRequest

    target = await asyncio.to_thread(_target, request, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not 1 <= len(prompts) <= 64:
        raise ApiError(422, "invalid_request", "prompt: give 1 to 64 prompts")
    cid, created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())

    def request_for(prompt: str):
        return GenerationRequest(
            messages=[{"role": "user", "content": prompt}],
            adapter=target.adapter,
            params=body.params(),
            stop_sequences=body.stops(),
            candidate_count=body.n,
        )

    if body.stream:
        if body.n != 1 or len(prompts) != 1:
            raise ApiError(422, "invalid_request", "stream supports one prompt and n=1 only")

        def chunk(text: str, finish: str | None) -> dict:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }

        async def events() -> AsyncIterator[str]:
            async for piece in iterate_in_threadpool(target.engine.stream(request_for(prompts[0]))):
                if piece:
                    yield _sse(chunk(piece, None))
            yield _sse(chunk("", "stop"))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    futures = [target.engine.submit(request_for(p)) for p in prompts]  # all batched together
    results = [await asyncio.wrap_future(f) for f in futures]
    choices, index = [], 0
    for result in results:
        for text, finish in zip(result.texts, result.finish_reasons, strict=True):
            choices.append(
                {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
            )
            index += 1
    usage = {
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": usage,
    }


def _usage(result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"

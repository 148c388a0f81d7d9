"""Vertex AI's resource shapes, so Google's own ``vertexai`` SDK (REST transport,
``api_endpoint`` set to this server) can call a tuned model:

- ``GET /v1/projects/{p}/locations/{l}/endpoints/{endpoint}``: the endpoint and its deployed
  model (``aiplatform.Endpoint(...)`` reads it before predicting)
- ``GET /v1/projects/{p}/locations/{l}/models/{model}``: a tuned model version (``name`` or
  ``name@version``, as Vertex writes model versions)
- ``:generateContent`` and ``:streamGenerateContent`` on endpoints and on publisher-model paths,
  in Gemini's ``contents`` / ``systemInstruction`` / ``generationConfig`` shape

The project and location in a path are accepted as they come: this server is the one place. A
stream is a JSON array of responses, sent as they are made (Google's REST default), or
server-sent events with ``?alt=sse``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunelab.api.deps import ServicesDep
from tunelab.api.errors import ApiError, shaped_error
from tunelab.api.inference import check_name, generate_all, open_stream, stream_deltas
from tunelab.api.vertex_schemas import GenerateContentRequest

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["vertex"])

_PLACE = "/projects/{project}/locations/{location}"
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS"}


def _time(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment else None


@router.get(_PLACE + "/endpoints/{endpoint}")
def get_endpoint(project: str, location: str, endpoint: str, services: ServicesDep) -> dict:
    from tunelab.registry.endpoints import deployments, list_endpoints

    found = next((e for e in list_endpoints(services.db) if e.id == endpoint), None)
    if found is None:
        raise ApiError(404, "not_found", f"no endpoint {endpoint!r}")
    place = f"projects/{project}/locations/{location}"
    live = deployments(services.db, endpoint)
    deployed = [
        {
            "id": d.version.id,
            "model": f"{place}/models/{d.version.model_name}",
            "modelVersionId": str(d.version.version),
            "displayName": d.version.model_name,
            "createTime": _time(d.version.created_at),
        }
        for d in live
    ]
    newest = max((d.version.created_at for d in live), default=found.created_at)
    return {
        "name": f"{place}/endpoints/{found.id}",
        "displayName": found.display_name,
        "deployedModels": deployed,
        "trafficSplit": {d.version.id: d.traffic_percentage for d in live},
        "createTime": _time(found.created_at),
        "updateTime": _time(newest),
    }


@router.get(_PLACE + "/models/{model}")
def get_model(project: str, location: str, model: str, services: ServicesDep) -> dict:
    from tunelab.registry.endpoints import endpoint_id_for, is_deployed
    from tunelab.registry.models import ModelNotRegistered, get_version

    try:
        version = get_version(services.db, model)
    except (ModelNotRegistered, ValueError) as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    place = f"projects/{project}/locations/{location}"
    endpoint = endpoint_id_for(version.model_name)
    return {
        "name": f"{place}/models/{version.model_name}",
        "displayName": version.model_name,
        "versionId": str(version.version),
        "description": f"{version.method} tuning of {version.base_model}",
        "createTime": _time(version.created_at),
        "versionCreateTime": _time(version.created_at),
        "updateTime": _time(version.created_at),
        "deployedModels": (
            [{"endpoint": f"{place}/endpoints/{endpoint}", "deployedModelId": version.id}]
            if is_deployed(services.db, version.id)
            else []
        ),
    }


def _endpoint_target(request: Request, endpoint: str):
    from tunelab.serving.pool import ModelNotAvailable

    check_name(endpoint, "endpoint")
    try:
        return request.app.state.inference.endpoint_target(endpoint)
    except ModelNotAvailable as exc:
        raise ApiError(404, "not_found", str(exc)) from None


def _model_target(request: Request, model: str):
    from tunelab.serving.pool import ModelNotAvailable

    check_name(model, "model")
    try:
        return request.app.state.inference.target(model)
    except ModelNotAvailable as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.post(_PLACE + "/endpoints/{endpoint}:generateContent")
@router.post("/endpoints/{endpoint}:generateContent")
async def endpoint_generate(endpoint: str, body: GenerateContentRequest, request: Request):
    body.refuse_unimplemented()
    target = await asyncio.to_thread(_endpoint_target, request, endpoint)
    return await _generate(target, body, endpoint)


@router.post(_PLACE + "/publishers/{publisher}/models/{model}:generateContent")
@router.post("/publishers/{publisher}/models/{model}:generateContent")
async def model_generate(model: str, body: GenerateContentRequest, request: Request):
    body.refuse_unimplemented()
    target = await asyncio.to_thread(_model_target, request, model)
    return await _generate(target, body, model)


@router.post(_PLACE + "/endpoints/{endpoint}:streamGenerateContent")
@router.post("/endpoints/{endpoint}:streamGenerateContent")
async def endpoint_stream(endpoint: str, body: GenerateContentRequest, request: Request):
    body.refuse_unimplemented()
    target = await asyncio.to_thread(_endpoint_target, request, endpoint)
    return await _stream(target, body, endpoint, request)


@router.post(_PLACE + "/publishers/{publisher}/models/{model}:streamGenerateContent")
@router.post("/publishers/{publisher}/models/{model}:streamGenerateContent")
async def model_stream(model: str, body: GenerateContentRequest, request: Request):
    body.refuse_unimplemented()
    target = await asyncio.to_thread(_model_target, request, model)
    return await _stream(target, body, model, request)


def _request(target, body: GenerateContentRequest):
    from tunelab.serving.engine import GenerationRequest
    from tunelab.serving.generation import GenerationParams

    config = body.generation_config
    defaults = GenerationParams()
    given = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "max_output_tokens": config.max_output_tokens,
        "seed": config.seed,
    }
    params = defaults.model_copy(update={k: v for k, v in given.items() if v is not None})
    return GenerationRequest(
        messages=body.messages(),
        adapter=target.adapter,
        params=params,
        stop_sequences=config.stop_sequences,
        candidate_count=config.candidate_count,
    )


def _usage(result) -> dict[str, int]:
    return {
        "promptTokenCount": result.prompt_tokens,
        "candidatesTokenCount": result.completion_tokens,
        "totalTokenCount": result.prompt_tokens + result.completion_tokens,
    }


def _candidate(text: str, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "content": {"role": "model", "parts": [{"text": text}]}}
    if finish is not None:
        out["finishReason"] = _FINISH.get(finish, "OTHER")
    return out


async def _generate(target, body: GenerateContentRequest, name: str) -> dict[str, Any]:
    (result,) = await generate_all(target.engine, [_request(target, body)], param="contents")
    return {
        "candidates": [
            _candidate(text, i, finish)
            for i, (text, finish) in enumerate(
                zip(result.texts, result.finish_reasons, strict=True)
            )
        ],
        "usageMetadata": _usage(result),
        "modelVersion": name,
        "responseId": uuid.uuid4().hex,
    }


async def _stream(target, body: GenerateContentRequest, name: str, request: Request):
    if body.generation_config.candidate_count != 1:
        raise ApiError(
            400,
            "invalid_request",
            "generationConfig.candidateCount: streaming serves one candidate",
            {"param": "generationConfig.candidateCount"},
        )
    stream = await open_stream(target.engine, _request(target, body), param="contents")
    rid = uuid.uuid4().hex
    sse = "sse" in (request.query_params.get("alt"), request.query_params.get("$alt"))

    def response(candidate: dict, usage: dict | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"candidates": [candidate], "modelVersion": name, "responseId": rid}
        if usage is not None:
            out["usageMetadata"] = usage
        return out

    async def responses() -> AsyncIterator[dict]:
        try:
            async for text in stream_deltas(stream):
                yield response(_candidate(text))
            result = stream.result.result()
        except Exception as exc:  # the status line is sent: the error goes in the stream
            logger.exception("generation failed mid-stream")
            yield shaped_error("vertex", 500, "internal", f"generation failed: {exc}")[1]
            return
        yield response(_candidate("", 0, result.finish_reasons[0]), _usage(result))

    async def as_sse() -> AsyncIterator[str]:
        async for item in responses():
            yield f"data: {json.dumps(item)}\r\n\r\n"

    async def as_json_array() -> AsyncIterator[str]:
        sep = "["
        async for item in responses():
            yield sep + json.dumps(item)
            sep = ",\r\n"
        yield "]"

    if sse:
        return StreamingResponse(as_sse(), media_type="text/event-stream")
    return StreamingResponse(as_json_array(), media_type="application/json")

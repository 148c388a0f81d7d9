"""Running generation requests from the inference routes (OpenAI, Vertex :predict, Gemini).

The engine checks a request when it is queued (prompt too long, empty, too many candidates), in
the caller's thread: here that check runs before any response starts, so a bad request is a 400
in the route's error shape, never a 500 and never a stream that opens and then drops. Errors
after a stream has started are the caller's to send as an error event (``stream_deltas``
re-raises them once the deltas so far have been delivered).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Future

from starlette.concurrency import iterate_in_threadpool

from tunelab.api.errors import ApiError


def check_name(name: str, param: str) -> str:
    """A model or endpoint name from a URL path: control characters never belong in one."""
    if not name or len(name) > 300 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ApiError(400, "invalid_request", f"{param}: not a valid name", {"param": param})
    return name


def _refused(exc: ValueError, param: str | None) -> ApiError:
    from tunelab.serving.engine import PromptTooLongError

    code = "context_length_exceeded" if isinstance(exc, PromptTooLongError) else "invalid_request"
    return ApiError(400, code, str(exc), {"param": param})


def backend_error(exc: Exception) -> ApiError:
    """An engine server's failure (``--engine vllm``) in the route's error shape: its refusal
    of the request a 400, its failure a 502, no answer a 503."""
    status = getattr(exc, "status", 502)
    status = status if status in (400, 503) else 502
    code = {400: "invalid_request", 503: "unavailable"}.get(status, "bad_gateway")
    return ApiError(status, code, str(exc))


def _submit_all(engine, requests: list, param: str | None) -> list[Future]:
    from tunelab.serving.engine import EngineClosedError

    futures: list[Future] = []
    try:
        for request in requests:
            futures.append(engine.submit(request))
    except ValueError as exc:
        for f in futures:  # one bad prompt refuses the whole call: free the rows already queued
            f.cancel()
        raise _refused(exc, param) from None
    except EngineClosedError:
        for f in futures:
            f.cancel()
        raise ApiError(503, "unavailable", "the server is shutting down") from None
    return futures


async def generate_all(engine, requests: list, param: str | None = None) -> list:
    """Queue every request at once (so they share the engine's batches), then await them all.
    ``param`` names the request field a refused prompt came from."""
    from tunelab.serving.vllm_engine import VllmError

    futures = await asyncio.to_thread(_submit_all, engine, requests, param)
    try:
        return [await asyncio.wrap_future(f) for f in futures]
    except VllmError as exc:
        raise backend_error(exc) from None
    finally:
        for f in futures:  # a client that went away frees its rows
            f.cancel()


def _open(engine, request, param: str | None):
    from tunelab.serving.engine import EngineClosedError
    from tunelab.serving.vllm_engine import VllmError

    try:
        return engine.stream(request)
    except VllmError as exc:
        raise backend_error(exc) from None
    except ValueError as exc:
        raise _refused(exc, param) from None
    except EngineClosedError:
        raise ApiError(503, "unavailable", "the server is shutting down") from None


async def open_stream(engine, request, param: str | None = None):
    """The request's :class:`~tunelab.serving.engine.TextStream`, checked and queued; call it
    before building the streaming response, so a refusal is an ordinary 400."""
    return await asyncio.to_thread(_open, engine, request, param)


async def stream_deltas(stream) -> AsyncIterator[str]:
    """The stream's non-empty text deltas; ``stream.result`` holds the finish reason and token
    counts once this ends. A client that disconnects cancels the request."""
    try:
        async for piece in iterate_in_threadpool(stream):
            if piece:
                yield piece
    finally:
        if not stream.result.done():
            stream.close()

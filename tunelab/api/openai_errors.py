"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for the routes
that mimic OpenAI's API (files, fine-tuning), so the official ``openai`` client raises its own
typed exceptions (``BadRequestError``, ``NotFoundError``, …) with the message and ``param`` set.

The rest of TuneLab answers ``{"error": {"code", "message", "details"}}``; routers opt in with
``APIRouter(route_class=OpenAIRoute)``, which converts the errors raised inside their handlers
(dependencies included, so a missing key is a 401 in OpenAI's shape too).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.api.errors import ApiError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
}
"""OpenAI's ``type`` by status; anything else (5xx) is a ``server_error``."""


class OpenAIError(ApiError):
    """An error with OpenAI's ``param`` (the request field at fault, dotted, or None)."""

    def __init__(
        self, status: int, code: str | None, message: str, param: str | None = None
    ) -> None:
        super().__init__(status, code or "", message, {"param": param} if param else None)
        self.param = param


def openai_error_body(
    status: int, message: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code or None,
        }
    }


def _respond(status: int, message: str, code: str | None, param: str | None, headers=None):
    return JSONResponse(
        openai_error_body(status, message, code, param), status_code=status, headers=headers
    )


class OpenAIRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                param = getattr(exc, "param", None) or exc.details.get("field")
                return _respond(exc.status, exc.message, exc.code, param)
            except RequestValidationError as exc:
                first = (exc.errors() or [{}])[0]
                # FastAPI's location starts with where the value came from (body, query, path).
                loc = [str(p) for p in first.get("loc", ())]
                param = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
                message = first.get("msg", "invalid request")
                return _respond(
                    400, f"{param}: {message}" if param else message, "invalid_value", param or None
                )
            except StarletteHTTPException as exc:
                return _respond(
                    exc.status_code,
                    str(exc.detail),
                    None,
                    None,
                    headers=getattr(exc, "headers", None),
                )

        return handle

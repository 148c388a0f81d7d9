"""Every error is JSON with the right status; a malformed body or a wrong type is a 4xx that
says what and where, never a 500.

The shape follows the API a route imitates, so each family's own clients can read it:

- TuneLab's REST routes: ``{"error": {"code", "message", "details"}}``
- the OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
  ``/v1/embeddings``): ``{"error": {"message", "type", "param", "code"}}``, as the ``openai``
  client parses it; bad input is a 400 there, as OpenAI answers it
- the Vertex routes (``:predict``, ``:generateContent``, ``/v1/projects/...``):
  ``{"error": {"code": <status>, "message", "status": "INVALID_ARGUMENT"}}``, Google's shape
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

Style = Literal["tunelab", "openai", "vertex"]

_OPENAI_PREFIXES = ("/v1/chat/", "/v1/completions", "/v1/models", "/v1/embeddings")
_VERTEX_MARKERS = (":predict", ":generateContent", ":streamGenerateContent")
_VERTEX_PREFIXES = ("/v1/projects/", "/v1/publishers/")

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
_OPENAI_TYPE = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """``details["param"]`` names the offending request field (OpenAI's ``param``)."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def style_for(path: str) -> Style:
    if path.startswith(_OPENAI_PREFIXES):
        return "openai"
    if path.startswith(_VERTEX_PREFIXES) or any(m in path for m in _VERTEX_MARKERS):
        return "vertex"
    return "tunelab"


def shaped_error(
    style: Style, status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """(status, body) of an error in the given family's shape. OpenAI and Google answer bad
    input with 400 where FastAPI's convention is 422."""
    details = details or {}
    if style == "tunelab":
        return status, error_body(code, message, details)
    status = 400 if status == 422 else status
    if style == "openai":
        kind = _OPENAI_TYPE.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        param = details.get("param", details.get("field"))
        return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}
    google = _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return status, {"error": {"code": status, "message": message, "status": google}}


def error_response(
    request: Request, status: int, code: str, message: str, details: dict | None = None, **kw
) -> JSONResponse:
    status, body = shaped_error(style_for(request.url.path), status, code, message, details)
    return JSONResponse(body, status_code=status, **kw)


def validation_errors(errors: list[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """Pydantic's errors as ``{field, message, type}``, the field written as the client wrote
    it (``messages[0].content``): the location is followed through the body the client sent, so
    the names pydantic gives the members of a union (``str``, ``list[str]``) are left out."""
    out = []
    for e in errors:
        loc = list(e.get("loc", ()))
        if loc and loc[0] == "body":
            loc = loc[1:]
        field, value = "", body
        for i, part in enumerate(loc):
            if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                field, value = f"{field}[{part}]", value[part]
            elif (
                isinstance(value, dict)
                and isinstance(part, str)
                and (part in value or (i == len(loc) - 1 and e.get("type") == "missing"))
            ):
                field, value = (f"{field}.{part}" if field else part), value.get(part)
            else:
                break
        out.append({"field": field, "message": e.get("msg", ""), "type": e.get("type")})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        raw = list(exc.errors())
        if style_for(request.url.path) == "tunelab":  # field paths as they always were
            errors = [
                {
                    "field": ".".join(str(p) for p in e.get("loc", ())),
                    "message": e.get("msg", ""),
                    "type": e.get("type"),
                }
                for e in raw
            ]
        else:  # the field as the client wrote it: messages[0].content
            errors = validation_errors(raw, exc.body)
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        details = {"errors": errors, "param": first["field"] or None}
        return error_response(request, 422, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            401: "unauthenticated",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        return error_response(
            request,
            exc.status_code,
            code,
            str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        # The message stays in the log: an unexpected error's text can hold server paths.
        message = f"internal error ({type(exc).__name__}); the server log has the details"
        return error_response(request, 500, "internal", message)

"""Dependencies routes declare by name: the services, and the caller's verified API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tunelab import auth
from tunelab.api.errors import ApiError
from tunelab.db.schema import ApiKey
from tunelab.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


def require_key(request: Request) -> ApiKey:
    """Bearer token (``Authorization: Bearer tl-…``, as the openai client sends it),
    ``x-goog-api-key`` (as Google's SDKs send an API key) or ``x-api-key``."""
    header = request.headers.get("authorization", "")
    presented = (
        header[7:].strip()
        if header.lower().startswith("bearer ")
        else request.headers.get("x-goog-api-key") or request.headers.get("x-api-key")
    )
    key = auth.verify_key(request.app.state.services.db, presented)
    if key is None:
        raise ApiError(
            401,
            "unauthenticated",
            "a valid API key is required (create one with `tunelab keys create`)",
        )
    return key


ServicesDep = Annotated[Services, Depends(get_services)]
CurrentKey = Annotated[ApiKey, Depends(require_key)]

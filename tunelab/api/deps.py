"""Dependencies routes declare by name: the services, and the caller's verified API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tunelab import auth
from tunelab.api.errors import ApiError
from tunelab.api.scopes import required_scope
from tunelab.db.schema import ApiKey
from tunelab.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


def require_key(request: Request) -> ApiKey:
    """Bearer token (``Authorization: Bearer tl-…``, as the openai client sends it),
    ``x-goog-api-key`` (as Google's SDKs send an API key) or ``x-api-key``, holding the scope
    the matched route needs (tunelab.api.scopes). The key's ``last_used_at`` is recorded, at
    most once a minute."""
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
    usage = getattr(request.app.state, "key_usage", None)
    if usage is not None:
        usage.used(key)
    route = request.scope.get("route")
    needed = required_scope(request.method, getattr(route, "path", request.url.path))
    if not auth.allows(key.scope, needed):
        raise ApiError(
            403,
            "forbidden",
            f"this request needs an API key with the {needed!r} scope; key {key.id} has "
            f"{key.scope!r} (create one with `tunelab keys create --scope {needed}`)",
            {"required_scope": needed, "key_scope": key.scope},
        )
    return key


ServicesDep = Annotated[Services, Depends(get_services)]
CurrentKey = Annotated[ApiKey, Depends(require_key)]

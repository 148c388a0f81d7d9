"""The caller's own key: its name and scopes, so a client (the Studio) shows only what it may do.

Keys are created, listed and revoked with ``tunelab keys`` on the server, not over HTTP: making
keys is the one power a stolen key should never give.
"""

from __future__ import annotations

from fastapi import APIRouter

from tunelab import auth
from tunelab.api.deps import CurrentKey

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.get("/me")
def me(key: CurrentKey) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "scope": key.scope,
        "scopes": list(auth.scopes_granted(key.scope)),
    }

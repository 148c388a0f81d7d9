"""API keys: ``tl-<prefix>.<secret>``, shown once, stored as a sha256, compared in constant time.

The prefix finds the stored row without scanning; the secret's hash is then compared with
``hmac.compare_digest``, so response time does not leak how much of a guess was right.

Every key has a scope (``SCOPES``); each scope allows what the ones before it allow, and more.
Which scope each route needs is tunelab.api.scopes' table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from tunelab.db import Database
from tunelab.db.schema import ApiKey, utcnow

SCOPES = ("inference", "tune", "admin")
"""Least to most: ``inference`` calls models (predict, OpenAI chat/completions/embeddings, the
models list); ``tune`` also uploads datasets, runs tuning jobs and reads tuned models; ``admin``
also deploys, undeploys and deletes."""

TOUCH_INTERVAL_SECONDS = 60.0
"""``last_used_at`` is written at most this often per key (per process), so a client streaming
tokens or polling a job does not make every request a database write."""


def scopes_granted(scope: str) -> tuple[str, ...]:
    """The scopes a key of ``scope`` holds: itself and every lesser one."""
    return SCOPES[: SCOPES.index(scope) + 1] if scope in SCOPES else ()


def allows(scope: str, needed: str) -> bool:
    return needed in scopes_granted(scope)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: choose one of {', '.join(SCOPES)}")
    return scope


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    secret: str
    """The full key; it cannot be recovered later."""
    scope: str = "admin"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Database, name: str, scope: str = "admin") -> CreatedKey:
    """``scope`` defaults to ``admin``: the operator's own key, as every key was before scopes;
    give ``inference`` or ``tune`` to keys handed to applications and colleagues."""
    check_scope(scope)
    prefix = secrets.token_hex(6)
    secret = f"tl-{prefix}.{secrets.token_urlsafe(32)}"
    with db.session() as s:
        s.add(ApiKey(id=prefix, name=name[:128], secret_sha256=_hash(secret), scope=scope))
    return CreatedKey(id=prefix, name=name, secret=secret, scope=scope)


def verify_key(db: Database, presented: str | None) -> ApiKey | None:
    if not presented or not presented.startswith("tl-") or "." not in presented:
        return None
    prefix = presented[3:].split(".", 1)[0]
    with db.session() as s:
        key = s.get(ApiKey, prefix)
        if key is None or key.revoked_at is not None:
            hmac.compare_digest(_hash(presented), "0" * 64)  # same work whether or not it exists
            return None
        if not hmac.compare_digest(_hash(presented), key.secret_sha256):
            return None
        return key


def touch(db: Database, key_id: str) -> None:
    with db.session() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


class UsageRecorder:
    """Records that a key was used, writing ``last_used_at`` at most once per interval per key.

    One per app (the API holds it): the first request of a key writes, the following ones within
    ``interval`` seconds only compare a monotonic clock under a lock.
    """

    def __init__(self, db: Database, interval: float = TOUCH_INTERVAL_SECONDS) -> None:
        self.db, self.interval = db, interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def used(self, key: ApiKey) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key.id)
            if last is not None and now - last < self.interval:
                return
            self._last[key.id] = now
        touch(self.db, key.id)


def list_keys(db: Database) -> list[ApiKey]:
    with db.session() as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(db: Database, key_id: str) -> bool:
    with db.session() as s:
        key = s.get(ApiKey, key_id)
        if key is None or key.revoked_at is not None:
            return False
        key.revoked_at = utcnow()
        return True

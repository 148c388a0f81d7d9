"""API keys: ``tl-<prefix>.<secret>``, shown once, stored as a sha256, compared in constant time.

The prefix finds the stored row without scanning; the secret's hash is then compared with
``hmac.compare_digest``, so response time does not leak how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update

from tunelab.db import Database
from tunelab.db.schema import ApiKey, utcnow


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    secret: str
    """The full key; it cannot be recovered later."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Database, name: str) -> CreatedKey:
    prefix = secrets.token_hex(6)
    secret = f"tl-{prefix}.{secrets.token_urlsafe(32)}"
    with db.session() as s:
        s.add(ApiKey(id=prefix, name=name[:128], secret_sha256=_hash(secret)))
    return CreatedKey(id=prefix, name=name, secret=secret)


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

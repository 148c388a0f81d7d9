"""Version aliases: ``name@alias`` names one version of a tuned model, as in Vertex's model
registry. ``default`` is what ``name`` alone means: the first version gets it, a tuning job that
deploys its new version moves it there (the job's ``deploy`` setting), and a user may move it
like any alias. The user's own aliases (``prod``, ``candidate``) move only when asked.

An alias is a word, never a number (``name@3`` is version 3) and never ``checkpoint-…``
(``name@checkpoint-STEP`` names a training checkpoint), so every reference has one meaning.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from tunelab.db import Database
from tunelab.db.schema import ModelAlias, ModelVersion

DEFAULT = "default"
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
ALIAS_RULE = (
    "1 to 64 characters: lower-case letters, digits, '-' and '_', starting with a letter, and "
    "not 'checkpoint-…' (that names a training checkpoint)"
)
RESERVED_PREFIX = "checkpoint-"


class InvalidAlias(ValueError):
    """An alias breaks the grammar, or names no version; the message says which and why."""


def is_alias(word: str) -> bool:
    return bool(ALIAS.match(word)) and not word.startswith(RESERVED_PREFIX)


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not is_alias(alias):
        shown = alias[:70] if isinstance(alias, str) else alias
        raise InvalidAlias(f"alias {shown!r} is not valid: use {ALIAS_RULE}")
    return alias


def set_alias(db: Database, name: str, version: int, alias: str) -> ModelVersion:
    """Point ``name@alias`` at ``version`` (moving it if it named another); the version."""
    from tunelab.registry.models import get_version

    check_alias(alias)
    target = get_version(db, name, version)
    with db.session() as s:
        _point(s, name, alias, target.id)
    return target


def remove_alias(db: Database, name: str, alias: str) -> None:
    """Remove a user alias; ``default`` cannot be removed (``name`` must keep a meaning), only
    moved."""
    check_alias(alias)
    if alias == DEFAULT:
        raise InvalidAlias("alias 'default' cannot be removed, only moved to another version")
    with db.session() as s:
        row = s.scalar(
            select(ModelAlias).where(ModelAlias.model_name == name, ModelAlias.alias == alias)
        )
        if row is None:
            raise LookupError(f"tuned model {name!r} has no alias {alias!r}")
        s.delete(row)


def aliases_by_version(db: Database, name: str) -> dict[str, list[str]]:
    """{model version id: its aliases, sorted} for ``name``."""
    with db.session() as s:
        rows = s.execute(
            select(ModelAlias.model_version_id, ModelAlias.alias)
            .where(ModelAlias.model_name == name)
            .order_by(ModelAlias.alias)
        ).all()
    out: dict[str, list[str]] = {}
    for version_id, alias in rows:
        out.setdefault(version_id, []).append(alias)
    return out


def aliased_version(db: Database, name: str, alias: str) -> ModelVersion | None:
    """The version ``name@alias`` names, or None."""
    with db.session() as s:
        return s.scalar(
            select(ModelVersion)
            .join(ModelAlias, ModelAlias.model_version_id == ModelVersion.id)
            .where(ModelAlias.model_name == name, ModelAlias.alias == alias)
        )


def ensure_default(session, name: str, version_id: str) -> None:
    """Give ``name`` a ``default`` alias at ``version_id`` if it has none (its first version, or
    after the default version was deleted). Runs inside the caller's transaction."""
    exists = session.scalar(
        select(ModelAlias.id).where(ModelAlias.model_name == name, ModelAlias.alias == DEFAULT)
    )
    if exists is None:
        _point(session, name, DEFAULT, version_id)


def move_default(db: Database, name: str, version_id: str) -> None:
    with db.session() as s:
        _point(s, name, DEFAULT, version_id)


def _point(session, name: str, alias: str, version_id: str) -> None:
    row = session.scalar(
        select(ModelAlias).where(ModelAlias.model_name == name, ModelAlias.alias == alias)
    )
    if row is None:
        session.add(ModelAlias(model_name=name, alias=alias, model_version_id=version_id))
    else:
        row.model_version_id = version_id

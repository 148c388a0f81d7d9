"""The grammar of model names, defined once for tuned models and operator-added base models.

A name is what a client writes in a request's ``model`` field, so it must never look like a
path, a hub id (``org/name``) or a version reference (``name@3``): letters, digits, ``-``,
``_`` and ``.``, 1 to 128 characters, starting with a letter or digit (so never ``.`` or
``..``).
"""

from __future__ import annotations

import re

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_RULE = (
    "1 to 128 characters: letters, digits, '-', '_' and '.', starting with a letter or digit "
    "(no '/', no '@', no spaces)"
)


class InvalidModelName(ValueError):
    """A model name breaks the grammar or takes a name already meaning something else."""


def check_name_grammar(name: str, what: str = "tuned model name") -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        shown = name if isinstance(name, str) and len(name) <= 140 else f"{str(name)[:140]}…"
        raise InvalidModelName(f"{what} {shown!r} is not valid: use {NAME_RULE}")
    return name

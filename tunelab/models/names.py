"""The grammar of model names, defined once for tuned models and operator-added base models.

A name is what a client writes in a request's ``model`` field, so it must never look like a
path, a hub id (``org/name``) or a version reference (``name@3``): letters, digits, ``-``,
``_`` and ``.``, 1 to 128 characters, starting with a letter or digit (so never ``.`` or
``..``).
"""

from __future__ import annotations

import re

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
OPENAI_FT_NAME = re.compile(
    r"^ft:[A-Za-z0-9][A-Za-z0-9._-]{0,47}:[A-Za-z0-9._-]{0,64}:[a-z0-9]{1,32}$"
)
"""The one other form a tuned model's name may take: OpenAI's ``ft:{base}:{suffix}:{id}``, which
the OpenAI fine-tuning routes register so that code written for OpenAI calls the result by the
name it was given (no '/', no '@': it can never be a path or a version reference either)."""
NAME_RULE = (
    "1 to 128 characters: letters, digits, '-', '_' and '.', starting with a letter or digit "
    "(no '/', no '@', no spaces)"
)


def is_model_name(name: object) -> bool:
    """Whether ``name`` has the form of a model name (or of an OpenAI ``ft:`` name)."""
    return isinstance(name, str) and bool(MODEL_NAME.match(name) or OPENAI_FT_NAME.match(name))


class InvalidModelName(ValueError):
    """A model name breaks the grammar or takes a name already meaning something else."""


def check_name_grammar(name: str, what: str = "tuned model name") -> str:
    if not is_model_name(name):
        shown = name if isinstance(name, str) and len(name) <= 140 else f"{str(name)[:140]}…"
        raise InvalidModelName(f"{what} {shown!r} is not valid: use {NAME_RULE}")
    return name

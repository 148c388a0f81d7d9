"""The JSONL formats TuneLab reads, each parsed into one :class:`~tunelab.data.example.Example`.

Supervised tuning accepts the formats Vertex AI documents, told apart by their keys:

- Vertex text models: ``{"input_text": str, "output_text": str}`` -> ``text``
- Gemini messages: ``{"messages": [{"role": "system"|"user"|"model", "content": str}]}``
  -> ``gemini_messages``
- Gemini contents: ``{"systemInstruction": {"parts": [{"text": str}]}, "contents": [{"role":
  "user"|"model", "parts": [{"text": str}]}]}`` (``system_instruction`` also accepted)
  -> ``gemini_contents``. The text parts of one turn are joined with no separator, as the Gemini
  API concatenates them; put any spacing you want inside the parts.
- OpenAI chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}]}``
  -> ``openai_chat`` (``assistant`` becomes ``model``).

A line is never rejected for its first mistake only: a parser collects every :class:`Problem` it
finds (with a field path such as ``messages[2].role``) so a user fixes a file in one round.
Keys a format does not use are ignored. Other kinds of data (preference pairs, prompts) have
their own list of parsers; ``FORMATS`` lists every kind once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from tunelab.data.example import Example, Role, Turn


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one line. ``code`` is stable (tests and tools match on it)."""

    code: str
    field: str | None
    """Where in the line, e.g. ``contents[1].parts[0].text``; None for the whole line."""
    message: str


Parsed = Example | list[Problem]


@dataclass(frozen=True, slots=True)
class Format:
    """A parser and the top-level keys that select it."""

    name: str
    keys: tuple[str, ...]
    """A line having any of these keys is in this format."""
    shape: str
    """Short description for the ``unknown_format`` message."""
    parse: Callable[[dict[str, Any], int], Parsed]


def _where(text: str, pos: int) -> str:
    """Where in the line JSON broke. json counts the line's own newline as a new line, so a
    line cut short used to read "(column 1)"; it is the end of the line."""
    if pos >= len(text.rstrip()):
        return "(at the end of the line: is it cut short?)"
    return f"(column {pos + 1})"


def parse_line(text: str, line: int, kind: str = "supervised") -> Parsed:
    """Parse one JSONL line (already decoded) of data of the given kind."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return [Problem("invalid_json", None, f"invalid JSON: {exc.msg} {_where(text, exc.pos)}")]
    except RecursionError:
        return [Problem("invalid_json", None, "invalid JSON: nested too deeply")]
    return parse_record(obj, line, kind)


def parse_record(obj: Any, line: int, kind: str = "supervised") -> Parsed:
    """Parse one decoded JSON value: pick the format by its keys, then let that parser check it."""
    if not isinstance(obj, dict):
        return [Problem("not_an_object", None, f"expected a JSON object, got {_json_type(obj)}")]
    formats = _formats().get(kind)
    if formats is None:  # a caller's mistake, not the data's
        raise ValueError(f"unknown kind of data {kind!r} (known: {', '.join(_formats())})")
    matches = [f for f in formats if any(k in obj for k in f.keys)]
    if len(matches) == 1:
        return matches[0].parse(obj, line)
    accepted = "; ".join(f"{f.name} {f.shape}" for f in formats)
    if matches:
        names = ", ".join(f.name for f in matches)
        message = f"keys of several formats in one line ({names}); use exactly one of: {accepted}"
    else:
        message = f"unknown format: found keys {_keys(obj)}; accepted formats: {accepted}"
    return [Problem("unknown_format", None, message)]


# --- Vertex text models ---------------------------------------------------------------------


def _parse_text(obj: dict[str, Any], line: int) -> Parsed:
    problems: list[Problem] = []
    prompt = _string(obj, "input_text", "input_text", problems)
    answer = _string(obj, "output_text", "output_text", problems)
    if problems:
        return problems
    turns = (Turn("user", prompt), Turn("model", answer))
    return Example(turns=turns, line=line, format="text")


# --- Gemini messages and OpenAI chat (both under "messages") --------------------------------


def _message_turns(
    messages: list[Any], problems: list[Problem]
) -> tuple[list[Turn], list[tuple[str, Role]], bool, bool]:
    """The turns of a ``messages`` list, in Gemini's roles (OpenAI's ``assistant`` read as
    ``model``; one of the two per example), with each valid role's path for the order check,
    whether every message had a valid role (else the order is not checked: a missing turn
    would be reported twice), and whether the roles were OpenAI's. Problems go to
    ``problems``."""
    roles_used = {
        m.get("role") for m in messages if isinstance(m, dict) and isinstance(m.get("role"), str)
    }
    openai = "assistant" in roles_used
    if openai and "model" in roles_used:
        problems.append(
            Problem(
                "mixed_roles",
                "messages",
                "both 'assistant' (OpenAI) and 'model' (Gemini) roles in one example; use one",
            )
        )
    allowed = ("system", "user", "assistant") if openai else ("system", "user", "model")
    turns: list[Turn] = []
    roles: list[tuple[str, Role]] = []  # every valid role, even of a turn with a bad content
    roles_ok = True
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not _is_object(message, path, problems):
            roles_ok = False
            continue
        role = _string(message, "role", f"{path}.role", problems)
        if role is not None and role not in ("system", "user", "model", "assistant"):
            problems.append(_unknown_role(role, f"{path}.role", allowed))
            role = None
        content = _string(message, "content", f"{path}.content", problems)
        if role is None:
            roles_ok = False
            continue
        role = "model" if role == "assistant" else role
        roles.append((f"{path}.role", role))
        if content is not None:
            turns.append(Turn(role, content))
    return turns, roles, roles_ok, openai


def _parse_messages(obj: dict[str, Any], line: int) -> Parsed:
    problems: list[Problem] = []
    messages = _list(obj, "messages", "messages", problems)
    if messages is None:
        return problems
    turns, roles, roles_ok, openai = _message_turns(messages, problems)
    if roles_ok:
        _check_order(roles, "messages", problems)
    if problems:
        return problems
    fmt = "openai_chat" if openai else "gemini_messages"
    return Example(turns=tuple(turns), line=line, format=fmt)


# --- Gemini contents -------------------------------------------------------------------------


def _parse_contents(obj: dict[str, Any], line: int) -> Parsed:
    problems: list[Problem] = []
    turns, roles, roles_ok = _contents_turns(obj, problems)
    if roles_ok:
        _check_order(roles, "contents", problems)
    if problems:
        return problems
    return Example(turns=tuple(turns), line=line, format="gemini_contents")


def _contents_turns(
    obj: dict[str, Any], problems: list[Problem]
) -> tuple[list[Turn], list[tuple[str, Role]], bool]:
    """A Gemini ``contents`` line's turns (its system instruction first), each valid role with
    its path, and whether every role was readable (only then can the order be checked). Shared
    by supervised examples (a model turn last) and prompts (a user turn last)."""
    turns: list[Turn] = []
    roles: list[tuple[str, Role]] = []
    key = "systemInstruction" if "systemInstruction" in obj else "system_instruction"
    if "systemInstruction" in obj and "system_instruction" in obj:
        problems.append(
            Problem(
                "duplicate_field",
                "system_instruction",
                "both 'systemInstruction' and 'system_instruction'; give one",
            )
        )
    elif key in obj and _is_object(obj[key], key, problems):
        if "role" in obj[key]:  # optional, and its value does not matter
            _string(obj[key], "role", f"{key}.role", problems)
        text = _parts_text(obj[key], key, problems)
        if text is not None:
            turns.append(Turn("system", text))
    contents = _list(obj, "contents", "contents", problems)
    roles_ok = contents is not None
    for i, content in enumerate(contents or []):
        path = f"contents[{i}]"
        if not _is_object(content, path, problems):
            roles_ok = False
            continue
        role = _string(content, "role", f"{path}.role", problems)
        if role is not None and role not in ("user", "model"):
            hint = "; a system instruction goes in systemInstruction" if role == "system" else ""
            problems.append(_unknown_role(role, f"{path}.role", ("user", "model"), hint))
            role = None
        text = _parts_text(content, path, problems)
        if role is None:
            roles_ok = False
            continue
        roles.append((f"{path}.role", role))
        if text is not None:
            turns.append(Turn(role, text))
    return turns, roles, roles_ok


def _parts_text(container: dict[str, Any], path: str, problems: list[Problem]) -> str | None:
    """The turn's text parts joined with no separator, or None after recording why not."""
    parts = _list(container, "parts", f"{path}.parts", problems)
    if parts is None:
        return None
    texts: list[str] = []
    for j, part in enumerate(parts):
        part_path = f"{path}.parts[{j}]"
        if not _is_object(part, part_path, problems):
            continue
        if "text" not in part:
            problems.append(
                Problem(
                    "missing_field",
                    f"{part_path}.text",
                    f"missing required field (only text parts can be tuned on; found keys {_keys(part)})",
                )
            )
        elif not isinstance(part["text"], str):
            problems.append(_wrong_type(f"{part_path}.text", "a string", part["text"]))
        else:
            texts.append(part["text"])
    if len(texts) < len(parts):
        return None
    text = "".join(texts)
    if not text.strip():
        problems.append(Problem("empty_field", f"{path}.parts", "the turn has no text"))
        return None
    return text


# --- Shared checks ---------------------------------------------------------------------------


def check_turn_alternation(
    roles: list[tuple[str, Role]], problems: list[Problem]
) -> list[tuple[str, Role]]:
    """System first (if any), then user and model alternating from user; returns the spoken
    (non-system) turns, for the caller's rule on how a conversation must end."""
    expected: Role = "user"
    previous: Role | None = None
    for i, (path, role) in enumerate(roles):
        if role == "system":
            if i > 0:
                problems.append(Problem("turn_order", path, "a system turn may only come first"))
            continue
        if role != expected:
            after = f"after a {previous} turn" if previous else "at the start"
            problems.append(
                Problem("turn_order", path, f"expected a {expected} turn {after}, got {role}")
            )
        previous = role
        expected = "model" if role == "user" else "user"
    return [(p, r) for p, r in roles if r != "system"]


def _check_order(roles: list[tuple[str, Role]], where: str, problems: list[Problem]) -> None:
    """Alternating turns (:func:`check_turn_alternation`) ending with a model turn."""
    spoken = check_turn_alternation(roles, problems)
    if not any(r == "model" for _, r in spoken):
        problems.append(
            Problem("no_model_turn", where, "no model turn: nothing for the model to learn")
        )
    elif spoken[-1][1] != "model":
        problems.append(
            Problem(
                "turn_order",
                spoken[-1][0],
                "the last turn must be a model turn (the answer the model learns to give)",
            )
        )


def _string(obj: dict[str, Any], key: str, path: str, problems: list[Problem]) -> str | None:
    """``obj[key]`` if it is a non-blank string, else None after recording why not."""
    if key not in obj:
        problems.append(Problem("missing_field", path, "missing required field"))
        return None
    value = obj[key]
    if not isinstance(value, str):
        problems.append(_wrong_type(path, "a string", value))
        return None
    if not value.strip():
        problems.append(Problem("empty_field", path, "empty or whitespace-only string"))
        return None
    return value


def _list(obj: dict[str, Any], key: str, path: str, problems: list[Problem]) -> list | None:
    """``obj[key]`` if it is a non-empty list, else None after recording why not."""
    if key not in obj:
        problems.append(Problem("missing_field", path, "missing required field"))
        return None
    value = obj[key]
    if not isinstance(value, list):
        problems.append(_wrong_type(path, "an array", value))
        return None
    if not value:
        problems.append(Problem("empty_field", path, "empty array"))
        return None
    return value


def _is_object(value: Any, path: str, problems: list[Problem]) -> bool:
    if isinstance(value, dict):
        return True
    problems.append(_wrong_type(path, "an object", value))
    return False


def _wrong_type(path: str, expected: str, value: Any) -> Problem:
    return Problem("wrong_type", path, f"expected {expected}, got {_json_type(value)}")


def _unknown_role(role: str, path: str, allowed: tuple[str, ...], hint: str = "") -> Problem:
    shown = role if len(role) <= 40 else role[:40] + "..."
    expected = ", ".join(allowed)
    return Problem("unknown_role", path, f"unknown role {shown!r} (expected {expected}{hint})")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _keys(obj: dict[str, Any], limit: int = 10) -> str:
    """The object's keys for a message, shortened: a bad line must not make a huge message."""
    if not obj:
        return "none"
    keys = [repr(k if len(k) <= 40 else k[:40] + "...") for k in list(obj)[:limit]]
    return ", ".join(keys) + (f" and {len(obj) - limit} more" if len(obj) > limit else "")


TEXT = Format("text", ("input_text", "output_text"), '{"input_text", "output_text"}', _parse_text)
MESSAGES = Format(
    "gemini_messages/openai_chat",
    ("messages",),
    '{"messages": [{"role": system|user|model (or assistant), "content"}]}',
    _parse_messages,
)
CONTENTS = Format(
    "gemini_contents",
    ("contents", "systemInstruction", "system_instruction"),
    '{"systemInstruction"?: {"parts"}, "contents": [{"role": user|model, "parts": [{"text"}]}]}',
    _parse_contents,
)

SUPERVISED_FORMATS = (TEXT, MESSAGES, CONTENTS)


@cache
def _formats() -> dict[str, tuple[Format, ...]]:
    # The preference and prompt parsers are built from this module's helpers, so their module
    # imports this one: the table is made on first use rather than at import.
    from tunelab.data.preference import PREFERENCE_FORMATS, PROMPT_FORMATS

    return {
        "supervised": SUPERVISED_FORMATS,
        "preference": PREFERENCE_FORMATS,  # pairs (RLHF, DPO)
        "prompt": PROMPT_FORMATS,  # prompts (RLHF)
    }


def __getattr__(name: str) -> Any:
    """``FORMATS``: parsers by kind of data, every kind listed once in :func:`_formats`."""
    if name == "FORMATS":
        return _formats()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

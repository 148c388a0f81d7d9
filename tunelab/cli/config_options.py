"""A config class's fields as command-line options, generated from its JSON schema: flag
``--field-name``, help = the field's description (with its choices), default = the field's
default. The schema is the one ``GET /v1/tuningMethods`` serves the Studio, so a default or a
description is written once, on the config class.

Options take text, turned into the type the schema names (integer, number, string; JSON for
unions, lists and objects, or a path to a ``.json`` file holding it, as rft's ``--grader``); what does not parse is handed on as it is, so the config's own validation
reports every bad value at once rather than the first one click meets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

FLAG_ALIASES = {
    "base_model": ("--base", "--base-model"),
    "processes": ("--processes", "--workers"),
}
"""Config fields whose option has a shorter, older name too (``--base`` since the first CLI)."""

NULL_WORDS = ("none", "null")
"""What a nullable option takes for null (e.g. ``--early-stopping-patience none``)."""

_SCHEMA_TYPES = {"integer": "INTEGER", "number": "FLOAT", "string": "TEXT", "boolean": "BOOLEAN"}


def config_flags(field: str) -> tuple[str, ...]:
    """The option names of a config field."""
    return FLAG_ALIASES.get(field, ("--" + field.replace("_", "-"),))


def _non_null(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The schema of a field's value and whether null is allowed (``X | None`` is anyOf)."""
    variants = prop.get("anyOf")
    if not variants:
        return prop, prop.get("type") == "null"
    kept = [v for v in variants if v.get("type") != "null"]
    nullable = len(kept) < len(variants)
    return (kept[0] if len(kept) == 1 else {"anyOf": kept}), nullable


def _parse(value: str | None, prop: dict[str, Any]) -> Any:
    """An option's text as the value the config expects; what does not parse is passed on as
    text, for the config's validation to report with the others."""
    if value is None:
        return None
    inner, nullable = _non_null(prop)
    if nullable and value.strip().lower() in NULL_WORDS:
        return None
    kind = inner.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
        if kind == "string":
            return value
        if value.endswith(".json") and Path(value).is_file():
            return read_json_file(Path(value))  # e.g. rft's --grader grader.json
        return json.loads(value)  # unions, lists, objects: JSON (a bare word stays text)
    except JsonFileError:
        raise  # the file's own error says where; the config's would only say "not an object"
    except ValueError:
        return value


class JsonFileError(ValueError):
    """A ``.json`` file given for an object option that cannot be read as JSON."""


def read_json_file(path: Path) -> Any:
    """The JSON in ``path``; a :class:`JsonFileError` saying where it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise JsonFileError(
            f"{path}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JsonFileError(f"{path}: cannot read: {exc}") from None


def _help(prop: dict[str, Any]) -> str:
    inner, nullable = _non_null(prop)
    text = prop.get("description") or ""
    if "enum" in inner:
        text += f" One of: {', '.join(map(str, inner['enum']))}."
    if nullable:
        text += f" '{NULL_WORDS[0]}' for null."
    return text.strip()


def _metavar(prop: dict[str, Any]) -> str:
    inner, _ = _non_null(prop)
    if "enum" in inner:
        return "[" + "|".join(map(str, inner["enum"])) + "]"
    return _SCHEMA_TYPES.get(inner.get("type", ""), "JSON")


@dataclass(frozen=True)
class ConfigOption:
    field: str
    flags: tuple[str, ...]
    """Every flag the option answers to (with ``--no-...`` for a boolean)."""
    param: str
    """The command function's parameter for it."""
    annotation: Any
    option: Any
    """The ``typer.Option`` declaring it."""
    prop: dict[str, Any]
    """The field's JSON schema."""


def config_options(config: type[BaseModel]) -> list[ConfigOption]:
    """An option per field of ``config`` but its constant ``method``."""
    schema = config.model_json_schema()
    required = set(schema.get("required", []))
    options = []
    for field, prop in schema["properties"].items():
        if field == "method" or "const" in prop:
            continue
        flags = config_flags(field)
        param = f"config_{field}"
        inner, _ = _non_null(prop)
        if inner.get("type") == "boolean":
            no = tuple(f.replace("--", "--no-", 1) for f in flags)
            pairs = tuple(f"{f}/{n}" for f, n in zip(flags, no, strict=True))
            option = typer.Option(prop.get("default", False), *pairs, help=_help(prop))
            options.append(ConfigOption(field, flags + no, param, bool, option, prop))
            continue
        default = ... if field in required else prop.get("default")
        if default is not None and default is not ... and not isinstance(default, str):
            default = json.dumps(default)  # the option's text; parsed back by _parse
        option = typer.Option(default, *flags, help=_help(prop), metavar=_metavar(prop))
        annotation = str | None if default is None else str
        options.append(ConfigOption(field, flags, param, annotation, option, prop))
    return options


def config_values(options: list[ConfigOption], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The config's keyword arguments from the command's, typed as the schema says."""
    values = {}
    for opt in options:
        given = kwargs[opt.param]
        values[opt.field] = given if isinstance(given, bool) else _parse(given, opt.prop)
    return values

"""Filling a grader's templates from a sample and its dataset line."""

from __future__ import annotations

from typing import Any

from tunelab.graders.spec import TEMPLATE_SLOT


class MissingField(KeyError):
    """A template names a field the dataset line does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


def lookup(item: dict[str, Any], path: str) -> Any:
    """``item["a"]["b"]`` for the path ``a.b``."""
    value: Any = item
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise MissingField(f"the line has no field item.{path}")
        value = value[key]
    return value


def as_text(value: Any) -> str:
    """Strings as they are; numbers, booleans, lists and objects as JSON."""
    import json

    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, sample: str, item: dict[str, Any]) -> str:
    def fill(match) -> str:
        slot = match.group(1)
        return sample if slot == "sample.output_text" else as_text(lookup(item, slot[5:]))

    return TEMPLATE_SLOT.sub(fill, template)


def missing_fields(fields: list[str], item: dict[str, Any]) -> list[str]:
    """The dotted ``fields`` that ``item`` lacks."""
    missing = []
    for path in dict.fromkeys(fields):
        try:
            lookup(item, path)
        except MissingField:
            missing.append(path)
    return missing

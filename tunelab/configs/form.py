"""How a config's fields show in a form, said on the config class with its fields.

The Studio's create form is built from the JSON schema ``GET /v1/tuningMethods`` serves, so a
config carries what the form needs beyond types, bounds, defaults and descriptions:

- each field's ``title`` (its label): the field name in words (``kl_coeff`` -> "KL coefficient"),
  unless the field sets ``title=`` itself;
- ``x-form`` at the top of the schema: ``basic``, the fields shown first, in that order (the
  parameters a user usually sets); ``advanced``, every other field, folded away: the config's
  own fields in their order, then the ones every method shares (compute, processes).

``method`` (a constant) and ``base_model`` (the form asks for it with the method) are in
neither list. A new field is in the form at once, among the advanced ones.

A nullable field whose null stands for a value (``epochs``: none means 3, unless
``train_steps`` is given) says so with ``json_schema_extra={"x-when-empty": 3}``: the form shows
it in the empty input and computes its estimates with it.

    class MyConfig(ComputeFields):
        model_config = ConfigDict(extra="forbid", frozen=True, **form_layout("train_steps"))
"""

from __future__ import annotations

from typing import Any

from pydantic.fields import ComputedFieldInfo, FieldInfo

OWN_INPUTS = ("method", "base_model")
"""Fields the form asks for outside the parameter list."""

SHARED_LAST = ("precision", "deploy", "accelerator", "devices", "processes")
"""Fields many methods share, listed after a config's own advanced fields."""

_TITLES = {
    "adapter_size": "Adapter size (LoRA rank)",
    "eval_every_steps": "Evaluate every N steps",
    "checkpoint_every_steps": "Checkpoint every N steps",
    "init_adapter": "Start from tuned model",
}
"""Labels a field name does not say well in words."""

_WORDS = {"kl": "KL", "coeff": "coefficient", "seq": "sequence", "warmup": "warm-up"}


def field_title(name: str, _info: FieldInfo | ComputedFieldInfo | None = None) -> str:
    """A field's label: ``learning_rate_multiplier`` -> "Learning rate multiplier"."""
    if name in _TITLES:
        return _TITLES[name]
    words = [_WORDS.get(w, w) for w in name.split("_")]
    return " ".join(words)[:1].upper() + " ".join(words)[1:]


def form_layout(*basic: str) -> dict[str, Any]:
    """``model_config`` entries for a config whose form shows ``basic`` first."""

    def add_layout(schema: dict[str, Any], cls: type) -> None:
        fields = [f for f in schema.get("properties", {}) if f not in OWN_INPUTS]
        unknown = [f for f in basic if f not in fields]
        if unknown:  # a typo here would hide nothing but show the field in the wrong place
            raise ValueError(f"{cls.__name__}: form_layout names no field {', '.join(unknown)}")
        rest = [f for f in fields if f not in basic]
        advanced = [f for f in rest if f not in SHARED_LAST]
        advanced += [f for f in SHARED_LAST if f in rest]
        schema["x-form"] = {"basic": list(basic), "advanced": advanced}

    return {"field_title_generator": field_title, "json_schema_extra": add_layout}

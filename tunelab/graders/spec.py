"""Grader declarations: the JSON a user writes, as typed, self-validating models.

A grader turns one sampled answer (and the dataset line it answers, the *item*) into a score.
Declared in JSON, as OpenAI's and Vertex's reinforcement fine-tuning graders are::

    {"type": "string_check", "operation": "regex", "reference": "^Answer: -?\\d+$"}
    {"type": "numeric", "reference": "{{item.answer}}", "abs_tolerance": 0}
    {"type": "weighted_sum", "graders": [{...}, {...}], "weights": [0.3, 0.7]}

Texts a grader compares are *templates*: ``{{sample.output_text}}`` is the sampled answer,
``{{item.FIELD}}`` (``item.a.b`` for nested objects) a field of the dataset line. Nothing here
imports torch or runs a grader: this module is the config half (REST body, CLI file, stored job
spec); :mod:`tunelab.graders.build` makes runnable graders from it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SAMPLE = "{{sample.output_text}}"
"""The default ``input`` of every text grader: the sampled answer."""

TEMPLATE_SLOT = re.compile(r"\{\{\s*(.*?)\s*\}\}")
FIELD_PATH = re.compile(r"^(sample\.output_text|item(\.[A-Za-z_][A-Za-z0-9_-]*)+)$")
MAX_TEMPLATE = 10_000


def check_template(text: str) -> str:
    """A template names only ``sample.output_text`` and ``item.FIELD[.FIELD...]``."""
    for slot in TEMPLATE_SLOT.findall(text):
        if not FIELD_PATH.match(slot):
            raise ValueError(
                f"unknown template slot {{{{{slot}}}}}: use {{{{sample.output_text}}}} or "
                "{{item.FIELD}} (a field of the dataset line, item.a.b for nested ones)"
            )
    stray = TEMPLATE_SLOT.sub("", text)
    if "{{" in stray or "}}" in stray:
        raise ValueError("unbalanced '{{' or '}}' in the template")
    return text


def item_fields(text: str) -> list[str]:
    """The dataset fields (dotted paths after ``item.``) a template reads."""
    return [s[len("item.") :] for s in TEMPLATE_SLOT.findall(text) if s.startswith("item.")]


Template = Annotated[str, Field(max_length=MAX_TEMPLATE)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, max_length=128, description="Shown in score breakdowns.")

    def fields(self) -> list[str]:
        """Dataset fields this grader reads (each line must have them)."""
        return [f for k in ("input", "reference") for f in item_fields(getattr(self, k, "") or "")]

    @property
    def label(self) -> str:
        return self.name or self.type


class _Text(_Spec):
    input: Template = Field(SAMPLE, description="What is graded (default: the answer).")

    @field_validator("input", "reference", check_fields=False)
    @classmethod
    def _templates(cls, value: str) -> str:
        return check_template(value)


class StringCheck(_Text):
    """1 if ``input`` and ``reference`` stand in ``operation``, else 0."""

    type: Literal["string_check"]
    reference: Template = Field(description="Text, or a regular expression for 'regex'.")
    operation: Literal["eq", "ne", "contains", "not_contains", "startswith", "endswith", "regex"]
    case_sensitive: bool = True
    strip: bool = Field(True, description="Ignore leading and trailing whitespace of both.")

    @model_validator(mode="after")
    def _regex_compiles(self) -> StringCheck:
        if self.operation == "regex" and not TEMPLATE_SLOT.search(self.reference):
            try:
                re.compile(self.reference)
            except re.error as exc:
                raise ValueError(f"reference is not a valid regular expression: {exc}") from None
        return self


class TextSimilarity(_Text):
    """Similarity of ``input`` to ``reference`` in [0, 1]."""

    type: Literal["text_similarity"]
    reference: Template
    metric: Literal["bleu", "rouge_l", "fuzzy_ratio"] = Field(
        description="Sentence BLEU (sacrebleu), ROUGE-L F-measure, or difflib's ratio."
    )


class JsonSchema(_Text):
    """1 if ``input`` parses as JSON (a ```json fence around it is allowed) and validates
    against ``json_schema``, else 0."""

    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(description="A JSON Schema (draft 2020-12 by default).")

    @field_validator("json_schema")
    @classmethod
    def _schema_is_valid(cls, schema: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import SchemaError, validators

        try:
            validators.validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "(root)"
            raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        return schema


class Numeric(_Text):
    """1 if the number in ``input`` is within tolerance of the number in ``reference``."""

    type: Literal["numeric"]
    reference: Template
    abs_tolerance: float = Field(0.0, ge=0)
    rel_tolerance: float = Field(0.0, ge=0, description="Relative to |reference|.")
    pattern: str | None = Field(
        None,
        max_length=1000,
        description="Regex with one group capturing the number in input; default: the last "
        "number in it.",
    )

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, pattern: str | None) -> str | None:
        if pattern is None:
            return None
        try:
            groups = re.compile(pattern).groups
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if groups != 1:
            raise ValueError(f"needs exactly one capturing group (the number), has {groups}")
        return pattern


class ScoreModel(_Spec):
    """A reward model tuned in TuneLab (method ``reward_model``, e.g. ``NAME-reward`` of an
    RLHF job) scores the prompt and answer; sigmoid of its score, in (0, 1)."""

    type: Literal["score_model"]
    model: str = Field(min_length=1, max_length=140, description="NAME or NAME@VERSION.")


PYTHON_SOURCE = r"^[A-Za-z0-9_-]{1,64}$"


class Python(_Spec):
    """``grade(sample, item) -> float`` from ``SOURCE.py`` in the operator's grader folder
    (``TUNELAB_PYTHON_GRADERS``), run in a separate process with time and memory limits and
    no network. A crash, timeout or non-number scores 0 and is counted."""

    type: Literal["python"]
    source: str = Field(
        pattern=PYTHON_SOURCE,
        description="File name without .py in the operator's folder of allowed graders.",
    )
    timeout_seconds: float = Field(5.0, gt=0, le=60, description="Per answer.")
    memory_mb: int = Field(512, ge=64, le=8192, description="Address-space limit.")


class Combine(_Spec):
    """``weighted_sum``: sum of w_i * s_i / sum of w_i (so 0/1 graders keep a 0..1 total);
    ``all``: the lowest score; ``any``: the highest (logical and/or of 0/1 graders)."""

    type: Literal["weighted_sum", "all", "any"]
    graders: list[GraderSpec] = Field(min_length=1, max_length=32)
    weights: list[float] | None = Field(
        None, description="weighted_sum only: one per grader, default all 1."
    )

    @model_validator(mode="after")
    def _weights(self) -> Combine:
        if self.weights is None:
            return self
        if self.type != "weighted_sum":
            raise ValueError(f"weights apply to weighted_sum only, not to {self.type!r}")
        if len(self.weights) != len(self.graders):
            raise ValueError(
                f"weights has {len(self.weights)} entries for {len(self.graders)} graders"
            )
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return self

    def fields(self) -> list[str]:
        return [f for g in self.graders for f in g.fields()]


GraderSpec = Annotated[
    StringCheck | TextSimilarity | JsonSchema | Numeric | ScoreModel | Python | Combine,
    Field(discriminator="type"),
]
Combine.model_rebuild()

GRADER_TYPES = (
    "string_check",
    "text_similarity",
    "json_schema",
    "numeric",
    "score_model",
    "python",
    "weighted_sum",
    "all",
    "any",
)


def parse_grader(
    obj: Any,
) -> StringCheck | TextSimilarity | JsonSchema | Numeric | ScoreModel | Python | Combine:
    """Validate a decoded grader JSON; raises pydantic's ValidationError listing every problem
    with its location (e.g. ``graders.1.operation``)."""
    from pydantic import TypeAdapter

    return TypeAdapter(GraderSpec).validate_python(obj)


def walk(spec) -> list:
    """``spec`` and every grader inside it, depth first."""
    out = [spec]
    for child in getattr(spec, "graders", None) or []:
        out += walk(child)
    return out


def error_path(loc) -> list[str]:
    """A pydantic error location without the union's tags: ``graders.0.operation``, not
    ``all.graders.0.string_check.operation``."""
    loc = list(loc)
    path = []
    for i, part in enumerate(loc):
        after = loc[i - 1] if i else None
        if part in GRADER_TYPES and (i == 0 or isinstance(after, int) or after == "grader"):
            continue
        if isinstance(part, str) and part.startswith("function-after"):
            continue
        path.append(str(part))
    return path


def describe_errors(exc, prefix: str = "grader") -> list[str]:
    """``field.path: message`` per problem of a ValidationError (see :func:`error_path`)."""
    lines = []
    for error in exc.errors():
        path = ([prefix] if prefix else []) + error_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{'.'.join(path) or '(root)'}: {message}")
    return lines

"""The graders that read text only: string_check, text_similarity, json_schema, numeric.

Each is a pure function of (answer, reference) -> score in [0, 1], run in this process: they
execute no user code (a regular expression is data; Python's ``re`` has no timeouts, so the
spec bounds its length).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any

from tunelab.graders.spec import JsonSchema, Numeric, StringCheck, TextSimilarity

NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
"""A decimal number, optionally signed, with thousands commas and an exponent."""


def string_check(spec: StringCheck, text: str, reference: str) -> float:
    if spec.strip:
        text, reference = text.strip(), reference.strip()
    flags = 0 if spec.case_sensitive else re.IGNORECASE
    if spec.operation == "regex":
        return float(re.search(reference, text, flags) is not None)
    if not spec.case_sensitive:
        text, reference = text.casefold(), reference.casefold()
    result = {
        "eq": text == reference,
        "ne": text != reference,
        "contains": reference in text,
        "not_contains": reference not in text,
        "startswith": text.startswith(reference),
        "endswith": text.endswith(reference),
    }[spec.operation]
    return float(result)


def text_similarity(spec: TextSimilarity, text: str, reference: str) -> float:
    if spec.metric == "fuzzy_ratio":
        return difflib.SequenceMatcher(None, text, reference, autojunk=False).ratio()
    if spec.metric == "bleu":
        from sacrebleu.metrics import BLEU

        # Sentence BLEU with exponential smoothing: unsmoothed, one missing 4-gram gives 0.
        return BLEU(effective_order=True).sentence_score(text, [reference]).score / 100.0
    from tunelab.evaluation.metrics import rouge_scores

    return float(rouge_scores([text], [reference])["rouge_l"][0])


def parse_json_answer(text: str) -> Any:
    """The JSON value of an answer, which may sit in a Markdown code fence."""
    stripped = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*\n?(.*?)\n?```", stripped, re.DOTALL)
    return json.loads(fence.group(1) if fence else stripped)


def json_schema(spec: JsonSchema, text: str) -> float:
    from jsonschema import validators

    try:
        value = parse_json_answer(text)
    except (json.JSONDecodeError, RecursionError):
        return 0.0
    validator = validators.validator_for(spec.json_schema)(spec.json_schema)
    return float(validator.is_valid(value))


def parse_number(text: str, pattern: str | None = None) -> float | None:
    """The number ``pattern``'s group captures, or else the last number in ``text``."""
    if pattern is not None:
        match = re.search(pattern, text)
        raw = match.group(1) if match else None
    else:
        found = NUMBER.findall(text)
        raw = found[-1] if found else None
    if raw is None:
        return None
    try:
        value = float(raw.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numeric(spec: Numeric, text: str, reference: str) -> float:
    got, want = parse_number(text, spec.pattern), parse_number(reference)
    if got is None or want is None:
        return 0.0
    tolerance = max(spec.abs_tolerance, spec.rel_tolerance * abs(want))
    return float(abs(got - want) <= tolerance)

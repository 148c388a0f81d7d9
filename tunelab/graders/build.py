"""Runnable graders from their specs (:mod:`tunelab.graders.spec`).

A grader scores a batch: ``grade(samples, items) -> Grades``, one score per answer and the
failures counted by kind. Batches, because a Python grader's process and a reward model's
forward pass are paid once per batch, not per answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.graders import spec as S
from tunelab.graders import text
from tunelab.graders.templates import MissingField, render

ModelLocator = Callable[[str], Path]
"""A ``score_model`` reference (NAME or NAME@VERSION) -> its reward model's bundle folder."""


@dataclass
class Grades:
    scores: np.ndarray
    """(N,) float64, one per answer; 0 for every failure."""
    failures: Counter = field(default_factory=Counter)
    """Failures by kind: ``timeout``, ``crash``, ``exception``, ``invalid_score``,
    ``missing_field``. Each scored 0."""
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    """Each sub-grader's (N,) scores of a combined grader, by label (for breakdowns)."""


class Grader:
    def __init__(self, spec, fn: Callable[[Sequence[str], Sequence[dict]], Grades]) -> None:
        self.spec, self._fn = spec, fn

    def grade(self, samples: Sequence[str], items: Sequence[dict[str, Any]]) -> Grades:
        if len(samples) != len(items):
            raise ValueError(f"{len(samples)} samples for {len(items)} items")
        return self._fn(list(samples), list(items))


def build_grader(spec, *, locate_model: ModelLocator | None = None) -> Grader:
    """A runnable grader for a validated spec. Resolves what it needs now (the Python file, the
    reward model) so a grader that cannot run fails here with a clear message."""
    if isinstance(spec, dict):
        spec = S.parse_grader(spec)
    if isinstance(spec, S.Combine):
        return _combine(spec, [build_grader(g, locate_model=locate_model) for g in spec.graders])
    if isinstance(spec, S.Python):
        from tunelab.graders.sandbox import Sandbox, grader_file

        box = Sandbox(
            grader_file(spec.source), timeout_seconds=spec.timeout_seconds, memory_mb=spec.memory_mb
        )
        box.check()

        def python(samples, items) -> Grades:
            scores, failures = box.grade(samples, items)
            return Grades(np.asarray(scores, dtype=np.float64), failures)

        return Grader(spec, python)
    if isinstance(spec, S.ScoreModel):
        from tunelab.graders.score_model import RewardModelScorer

        if locate_model is None:
            raise ValueError("score_model graders need the model registry, which is not open here")
        scorer = RewardModelScorer(locate_model(spec.model))
        return Grader(spec, lambda s, i: Grades(np.asarray(scorer(s, i), dtype=np.float64)))
    return Grader(spec, _per_answer(spec))


def _per_answer(spec) -> Callable[[list[str], list[dict]], Grades]:
    """A text grader applied answer by answer; a line missing a field scores 0 (counted)."""

    def one(sample: str, item: dict[str, Any]) -> float:
        value = render(spec.input, sample, item)
        if isinstance(spec, S.JsonSchema):
            return text.json_schema(spec, value)
        reference = render(spec.reference, sample, item)
        if isinstance(spec, S.StringCheck):
            return text.string_check(spec, value, reference)
        if isinstance(spec, S.TextSimilarity):
            return text.text_similarity(spec, value, reference)
        return text.numeric(spec, value, reference)

    def run(samples, items) -> Grades:
        scores, failures = np.zeros(len(samples)), Counter()
        for i, (sample, item) in enumerate(zip(samples, items, strict=True)):
            try:
                scores[i] = one(sample, item)
            except MissingField:
                failures["missing_field"] += 1
        return Grades(scores, failures)

    return run


def _combine(spec: S.Combine, children: list[Grader]) -> Grader:
    weights = np.asarray(spec.weights or [1.0] * len(children), dtype=np.float64)

    def run(samples, items) -> Grades:
        results = [g.grade(samples, items) for g in children]
        table = np.stack([r.scores for r in results])  # (G, N)
        if spec.type == "weighted_sum":
            scores = weights @ table / weights.sum()
        elif spec.type == "all":
            scores = table.min(axis=0)
        else:
            scores = table.max(axis=0)
        failures = sum((r.failures for r in results), Counter())
        parts: dict[str, np.ndarray] = {}
        for child, result in zip(children, results, strict=True):
            label = child.spec.label
            while label in parts:
                label += "'"
            parts[label] = result.scores
        return Grades(scores, failures, parts)

    return Grader(spec, run)

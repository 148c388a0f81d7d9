"""Bootstrap confidence intervals for metrics, and the paired bootstrap for model differences.

Percentile bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13):
draw B resamples of the N examples with replacement, recompute the metric on each, and take the
α/2 and 1-α/2 quantiles of the B values as the (1-α) interval around the value on the full set.
A resample is a vector of counts w (how often each example was drawn, Σw = N), so a metric kept
as per-example statistics S (N, k) (:class:`~tunelab.evaluation.metrics.Scored`) is recomputed
as ``aggregate(w @ S)``: corpus metrics such as BLEU and macro F1 are recomputed, not averaged.

Paired bootstrap (Koehn, *Statistical Significance Tests for Machine Translation Evaluation*,
EMNLP 2004): every model is scored on the *same* resampled examples, so the interval of the
difference d_b = m_b(model) - m_b(reference model) reflects how the models differ on the same
data, not the variation between data sets that both share. If the interval excludes 0, the
difference is significant at level α (the resamples are on the same side of zero).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from tunelab.evaluation.metrics import Scored

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
_MAX_WEIGHTS = 4_000_000
"""Entries of the (resamples, N) count matrix built at once: bounds memory for large N."""


@dataclass(frozen=True)
class Interval:
    """A value on the full sample and its bootstrap interval [low, high]."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def resample_counts(
    n: int, resamples: int, seed: int, chunk: int | None = None
) -> Iterator[np.ndarray]:
    """Chunks of the (resamples, n) matrix of draw counts, each row a resample of size n."""
    rng = np.random.default_rng(seed)
    chunk = chunk or max(1, _MAX_WEIGHTS // max(1, n))
    done = 0
    while done < resamples:
        rows = min(chunk, resamples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=rows).astype(np.float64)
        done += rows


def bootstrap_values(
    scored: Sequence[Scored], *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """(len(scored), resamples) metric values, every metric on the same resamples."""
    n = len(scored[0].stats)
    if any(len(s.stats) != n for s in scored):
        raise ValueError("paired bootstrap needs every metric on the same examples")
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    out = [[] for _ in scored]
    for weights in resample_counts(n, resamples, seed):
        for values, s in zip(out, scored, strict=True):
            values.append(s.aggregate(weights @ s.stats))  # (rows,)
    return np.stack([np.concatenate(v) for v in out])


def percentile_interval(
    value: float, samples: np.ndarray, confidence: float = DEFAULT_CONFIDENCE
) -> Interval:
    alpha = 1.0 - confidence
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return Interval(value, float("nan"), float("nan"))
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return Interval(float(value), float(low), float(high))


def bootstrap_interval(
    scored: Scored,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """The metric's value and its percentile-bootstrap interval."""
    samples = bootstrap_values([scored], resamples=resamples, seed=seed)[0]
    return percentile_interval(scored.value, samples, confidence)


@dataclass(frozen=True)
class PairedResult:
    intervals: list[Interval]
    """One per model."""
    differences: list[Interval | None]
    """Model i minus model 0, for each model (None for model 0 itself)."""


def paired_bootstrap(
    scored: Sequence[Scored],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> PairedResult:
    """Intervals for one metric on several models' outputs for the same examples, and for each
    model's difference from the first (e.g. tuned - base)."""
    samples = bootstrap_values(scored, resamples=resamples, seed=seed)  # (M, B)
    values = [s.value for s in scored]
    intervals = [
        percentile_interval(v, b, confidence) for v, b in zip(values, samples, strict=True)
    ]
    differences: list[Interval | None] = [None]
    for m in range(1, len(scored)):
        differences.append(
            percentile_interval(values[m] - values[0], samples[m] - samples[0], confidence)
        )
    return PairedResult(intervals, differences)

"""Bootstrap intervals: coverage on a synthetic case, and the paired difference of two models."""

import numpy as np
import pytest

from tunelab.evaluation.bootstrap import (
    Interval,
    bootstrap_interval,
    bootstrap_values,
    paired_bootstrap,
    resample_counts,
)
from tunelab.evaluation.metrics import bleu_scored, mean_metric


def test_resamples_draw_n_examples_with_replacement_and_are_seeded():
    a = np.concatenate(list(resample_counts(50, 300, seed=3, chunk=64)))
    b = np.concatenate(list(resample_counts(50, 300, seed=3)))
    assert a.shape == (300, 50) and (a.sum(axis=1) == 50).all()
    assert np.array_equal(a, b)  # chunking does not change the draws
    assert not np.array_equal(a, np.concatenate(list(resample_counts(50, 300, seed=4))))


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """Bernoulli(0.7) samples of 200: the 95% percentile interval covers p = 0.7 in about 95%
    of 200 independent repeats (binomial sd of the rate: 1.5%)."""
    p, n, repeats = 0.7, 200, 200
    rng = np.random.default_rng(2024)
    covered = 0
    for r in range(repeats):
        sample = (rng.random(n) < p).astype(float)
        interval = bootstrap_interval(mean_metric(sample), resamples=1000, seed=r)
        assert interval.low <= interval.value == sample.mean() <= interval.high
        covered += interval.low <= p <= interval.high
    assert 0.90 <= covered / repeats <= 0.99


def test_interval_width_matches_the_normal_approximation():
    sample = (np.random.default_rng(0).random(400) < 0.5).astype(float)
    interval = bootstrap_interval(mean_metric(sample), resamples=2000)
    se = np.sqrt(sample.mean() * (1 - sample.mean()) / 400)
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_paired_difference_excludes_zero_when_one_model_is_clearly_better():
    rng = np.random.default_rng(1)
    base = (rng.random(200) < 0.5).astype(float)
    tuned = np.maximum(base, rng.random(200) < 0.3)  # right wherever base is, and more
    result = paired_bootstrap([mean_metric(base), mean_metric(tuned)])
    diff = result.differences[1]
    assert result.differences[0] is None
    assert diff.value == pytest.approx(tuned.mean() - base.mean())
    assert diff.excludes_zero and diff.low > 0
    # Pairing: both models are scored on the same resamples, so their shared variation cancels
    # and the difference is narrower than for independent samples (widths adding in quadrature).
    base_i, tuned_i = result.intervals
    width = lambda i: i.high - i.low  # noqa: E731
    assert width(diff) < 0.8 * np.hypot(width(base_i), width(tuned_i))


def test_paired_difference_of_identical_models_is_exactly_zero():
    scores = (np.random.default_rng(2).random(100) < 0.6).astype(float)
    result = paired_bootstrap([mean_metric(scores), mean_metric(scores.copy())])
    assert result.differences[1] == Interval(0.0, 0.0, 0.0)
    assert not result.differences[1].excludes_zero
    assert result.intervals[0] == result.intervals[1]


def test_paired_difference_of_equally_good_models_includes_zero():
    rng = np.random.default_rng(5)
    a, b = ((rng.random(150) < 0.6).astype(float) for _ in range(2))
    diff = paired_bootstrap([mean_metric(a), mean_metric(b)]).differences[1]
    assert diff.low < 0 < diff.high


def test_corpus_metric_is_recomputed_on_each_resample():
    preds = ["the cat sat on the mat", "a dog", "hello there world", "the end of it all"]
    refs = ["the cat sat on the mat", "the dog barked", "hello world", "the end of it all"]
    scored = bleu_scored(preds, refs)
    values = bootstrap_values([scored], resamples=200, seed=0)[0]
    assert values.shape == (200,) and np.isfinite(values).all()
    assert values.min() < scored.value < values.max()
    with pytest.raises(ValueError, match="same examples"):
        bootstrap_values([scored, mean_metric([1.0])])

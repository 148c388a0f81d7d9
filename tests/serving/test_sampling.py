"""Sampling from logits: filters checked against distributions worked out by hand."""

import math

import pytest
import torch

from tunelab.serving.sampling import (
    RowSampling,
    filter_logits,
    make_generator,
    sample_batch,
    sample_row,
)

NEG = float("-inf")


def logits_of(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def kept(filtered):
    return [i for i, v in enumerate(filtered.tolist()) if v != NEG]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5])
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_k=0)) == [0, 1, 2, 3, 4]  # 0 = off
    assert kept(filter_logits(logits, top_k=99)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_set_reaching_p():
    # probabilities 0.5, 0.3, 0.15, 0.05 (already sorted)
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    # mass before each token: 0, 0.5, 0.8, 0.95 -> kept while < p
    assert kept(filter_logits(logits, top_p=0.5)) == [0]
    assert kept(filter_logits(logits, top_p=0.6)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.8)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.81)) == [0, 1, 2]
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3]
    # the most likely token survives even a tiny p
    assert kept(filter_logits(logits, top_p=0.01)) == [0]


def test_top_p_applies_after_top_k_on_unsorted_logits():
    logits = logits_of([0.05, 0.3, 0.15, 0.5])
    # top_k=3 drops index 0; renormalised over 0.3+0.15+0.5=0.95: 0.526, 0.316, 0.158
    # mass before: 0 (idx 3), 0.526 (idx 1), 0.842 (idx 2) -> p=0.8 keeps idx 3 and 1
    assert kept(filter_logits(logits, top_k=3, top_p=0.8)) == [1, 3]


def test_filter_does_not_modify_its_input():
    logits = torch.tensor([1.0, 2.0, 3.0])
    filter_logits(logits, top_k=1, top_p=0.1)
    assert logits.tolist() == [1.0, 2.0, 3.0]


def test_greedy_is_argmax_and_ignores_the_generator():
    logits = torch.tensor([0.0, 5.0, 4.9])
    assert sample_row(logits, RowSampling(temperature=0), make_generator(1)) == 1
    assert sample_row(logits, RowSampling(temperature=0, top_k=1), make_generator(2)) == 1


def test_seeded_rows_are_reproducible_and_follow_the_distribution():
    logits = logits_of([0.7, 0.2, 0.1])
    params = RowSampling(temperature=1.0)

    def draws(seed):
        return [sample_row(logits, params, g) for g in [make_generator(seed)] for _ in range(2000)]

    first, again = draws(7), draws(7)
    assert first == again
    freq = [first.count(i) / len(first) for i in range(3)]
    assert freq == pytest.approx([0.7, 0.2, 0.1], abs=0.04)


def test_temperature_sharpens_and_flattens():
    logits = logits_of([0.6, 0.4])
    gen = make_generator(0)
    cold = [sample_row(logits, RowSampling(temperature=0.25), gen) for _ in range(2000)]
    hot = [sample_row(logits, RowSampling(temperature=4.0), gen) for _ in range(2000)]
    # p0 at T: 0.6^(1/T) / (0.6^(1/T) + 0.4^(1/T))
    expected = lambda t: 0.6 ** (1 / t) / (0.6 ** (1 / t) + 0.4 ** (1 / t))  # noqa: E731
    assert cold.count(0) / 2000 == pytest.approx(expected(0.25), abs=0.04)  # 0.835
    assert hot.count(0) / 2000 == pytest.approx(expected(4.0), abs=0.04)  # 0.525
    assert not math.isclose(expected(0.25), expected(4.0), abs_tol=0.2)


def test_top_k_one_samples_the_argmax():
    logits = torch.tensor([0.1, 0.2, 3.0, 0.3])
    gen = make_generator(3)
    assert {sample_row(logits, RowSampling(1.5, top_k=1), gen) for _ in range(50)} == {2}


def test_rows_of_a_batch_are_independent():
    """A seeded row draws the same tokens whatever its neighbours are."""
    logits = logits_of([0.25, 0.25, 0.25, 0.25])
    row = RowSampling(temperature=1.0)

    def run(neighbours):
        gens = [make_generator(11)] + [make_generator(s) for s in range(neighbours)]
        params = [row] + [RowSampling(temperature=s % 2) for s in range(neighbours)]
        batch = logits.expand(1 + neighbours, -1)
        return [sample_batch(batch, params, gens)[0] for _ in range(30)]

    assert run(0) == run(5)

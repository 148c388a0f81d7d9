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


def reference_draws(logits, params, seeds, count):
    """The straightforward sampler: filter the whole row (filter_logits), then inverse-CDF
    over the vocabulary with the row's uniform draw, as sample_batch did before it filtered
    with a batched topk."""
    gens = [make_generator(s) for s in seeds]
    out = []
    for _ in range(count):
        row = []
        for x, p, g in zip(logits, params, gens, strict=True):
            scaled = filter_logits(x.float() / p.temperature, p.top_k, p.top_p)
            cdf = torch.softmax(scaled, dim=-1).double().cumsum(-1)
            u = torch.rand(1, generator=g, dtype=torch.float64)
            row.append(int(torch.searchsorted(cdf, u * cdf[-1:], right=True).clamp(max=len(x) - 1)))
        out.append(row)
    return out


@pytest.mark.parametrize(
    "settings",
    [
        [(0.2, 40, 0.8)] * 4,  # the API's defaults
        [(0.7, 0, 0.95), (1.0, 5, 1.0), (1.3, 0, 0.5), (0.9, 300, 0.9)],
        [(1.0, 0, 1.0), (0.5, 40, 0.8), (0.0, 0, 1.0), (2.0, 0, 0.99)],  # full, greedy, flat
    ],
)
def test_batched_filters_draw_what_filtering_the_whole_row_draws(settings):
    """The batched top-k/top-p path keeps the same tokens and draws the same token for the
    same uniform as filtering every row whole, including a greedy row, a row without filters
    and a flat one whose top-p nucleus reaches past the candidates."""
    torch.manual_seed(0)
    vocab = 3000
    logits = torch.randn(len(settings), vocab) * torch.tensor([3.0, 1.0, 0.2, 2.0])[:, None]
    params = [RowSampling(t, k, p) for t, k, p in settings]
    seeds = [101, 102, 103, 104]
    gens = [make_generator(s) for s in seeds]
    ours = [sample_batch(logits, params, gens) for _ in range(200)]
    sampled = [j for j, p in enumerate(params) if not p.greedy]
    expected = reference_draws(
        logits[sampled], [params[j] for j in sampled], [seeds[j] for j in sampled], 200
    )
    assert [[row[j] for j in sampled] for row in ours] == expected
    for j, p in enumerate(params):
        if p.greedy:
            assert {row[j] for row in ours} == {int(logits[j].argmax())}


def test_a_tied_top_k_boundary_keeps_every_tied_token():
    """filter_logits keeps every token equal to the k-th largest; the batched path hands such
    a row over to it rather than cutting the tie at k."""
    logits = torch.tensor([5.0, 1.0, 1.0, 1.0, 0.0, -2.0])
    gen = make_generator(5)
    seen = {sample_row(logits, RowSampling(3.0, top_k=2), gen) for _ in range(400)}
    assert seen == {0, 1, 2, 3}


def test_a_nucleus_wider_than_the_candidates_is_drawn_from_the_whole_row():
    """A flat row whose top-p nucleus holds more tokens than every candidate tier (256, then
    4096) falls back to sorting the row, and still draws what the whole-row filter draws."""
    torch.manual_seed(1)
    logits = torch.randn(2, 6000) * torch.tensor([[0.01], [4.0]])
    params = [RowSampling(1.0, 0, 0.99), RowSampling(0.8, 0, 0.9)]
    gens = [make_generator(7), make_generator(8)]
    ours = [sample_batch(logits, params, gens) for _ in range(60)]
    assert ours == reference_draws(logits, params, [7, 8], 60)
    assert len({row[0] for row in ours}) > 50  # the flat row really spreads over the vocabulary

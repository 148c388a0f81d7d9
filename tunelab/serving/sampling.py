"""Choosing the next token from logits, one row at a time: greedy, temperature, top-k, top-p.

The runner (``runner.py``) decodes rows that belong to different requests in one forward pass,
so every row carries its own parameters and its own random generator. These functions are pure: they take
logits and parameters and return tokens, with no state beyond the generator passed in.

The order of the filters is the one Hugging Face ``generate`` and Vertex AI use: divide by the
temperature, keep the ``top_k`` most likely tokens, keep the smallest set whose probability
reaches ``top_p`` (nucleus sampling, Holtzman et al. 2019, "The Curious Case of Neural Text
Degeneration"), then draw from what is left.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class RowSampling:
    """How one row picks its tokens."""

    temperature: float = 0.0
    """0 means greedy (argmax); otherwise logits are divided by it before the softmax."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 keeps them all."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probabilities sum to at least top_p."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or from the OS when no seed is given.

    Each row owns one, so a seeded request draws the same tokens whatever else shares its batch.
    """
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return gen


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus.

    logits: (V,) float, already divided by the temperature. Returns a new (V,) tensor.

    top-p keeps token i (in order of decreasing probability) while the probability mass of the
    tokens *before* it is below top_p, so the most likely token always survives and the kept
    set is the smallest whose mass reaches top_p.
    """
    out = logits.clone()
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # (V,) mass of strictly better tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[0] = False
        out[order[drop_sorted]] = float("-inf")
    return out


def sample_row(logits: torch.Tensor, params: RowSampling, generator: torch.Generator) -> int:
    """The next token of one row. logits: (V,) float."""
    return sample_batch(logits[None], [params], [generator])[0]


CANDIDATES = (256, 4096)
"""Top-p without top-k: the nucleus is looked for among this many most likely tokens (a
``topk``, not a sort of the whole vocabulary), then among the second count for the rows whose
first candidates hold less than ``top_p`` of the probability; rows still short sort it all, as
:func:`filter_logits`. SmolLM2-135M telling a story at temperature 1, top-p 0.95: the nucleus
held a median 53 tokens, more than 256 at 14 steps in 60, at most 1,257. One (4, 49k) ``topk``
of 4096 took 3 ms of CPU, a sort of the rows 16 ms."""

_UNDERFLOW = -80.0
"""Logits this far below a row's largest are given probability 0 (theirs is below e^-80, 1.8e-35,
far under float rounding beside the largest's 1). Why: PyTorch's vectorised ``exp`` on a CPU
takes a slow path for arguments whose result is subnormal or 0 (below ~-87, -inf included): a
(16, 49k) softmax of real logits at temperature 0.2 took 8 ms, against 1.6 ms clamped."""


def _weights(scaled: torch.Tensor) -> torch.Tensor:
    """Unnormalised probabilities of each row of ``scaled`` (R, V), relative to the row's most
    likely token (which gets 1). -inf logits get exactly 0."""
    shifted = (scaled - scaled.amax(dim=-1, keepdim=True)).clamp_(min=_UNDERFLOW)
    return shifted.exp_().sub_(math.exp(_UNDERFLOW)).clamp_(min=0.0)


def sample_batch(
    logits: torch.Tensor, params: list[RowSampling], generators: list[torch.Generator]
) -> list[int]:
    """The next token of every row. logits: (B, V); params and generators: one per row.

    Greedy rows share one argmax over the batch. Sampled rows are drawn together by inverse-CDF
    sampling: one uniform number per row, from the row's own generator (so a row's draw does
    not depend on its neighbours), and a binary search in the row's cumulative probabilities
    over its kept tokens in vocabulary order; several times faster on a CPU than
    ``torch.multinomial`` over a 49k vocabulary.

    Rows with top-k or top-p keep what :func:`filter_logits` keeps, but find it with one
    batched ``topk`` rather than a sort of the whole vocabulary per row (:func:`_draw_filtered`):
    with the API's defaults (temperature 0.2, top-k 40, top-p 0.8) a batch of 16 rows over
    SmolLM2's 49k vocabulary took 43 ms of CPU to sample that way, most of a decode step.
    """
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled:
        return torch.argmax(logits, dim=-1).tolist()  # (B,)
    # The argmax only where a row is greedy: over a 49k vocabulary it costs 1-3 ms a batch.
    tokens = [0] * len(params)
    if len(sampled) < len(params):
        tokens = torch.argmax(logits, dim=-1).tolist()
    temperature = torch.tensor([params[i].temperature for i in sampled])  # (S,)
    rows = logits if len(sampled) == len(params) else logits[sampled]
    scaled = rows.float() / temperature[:, None]  # (S, V), a new tensor
    u = torch.cat([torch.rand(1, generator=generators[i], dtype=torch.float64) for i in sampled])
    vocab = scaled.shape[-1]
    filtered = [
        j for j, i in enumerate(sampled) if 0 < params[i].top_k < vocab or params[i].top_p < 1.0
    ]
    drawn: dict[int, int] = {}
    if filtered:
        settings = [(params[sampled[j]].top_k, params[sampled[j]].top_p) for j in filtered]
        todo = list(range(len(filtered)))  # positions in ``filtered`` still to draw
        for candidates in CANDIDATES:
            rows_of = [filtered[f] for f in todo]
            some = scaled if len(rows_of) == len(sampled) else scaled[rows_of]
            found = _draw_filtered(some, [settings[f] for f in todo], u[rows_of], candidates)
            drawn.update((rows_of[f], token) for f, token in found.items())
            todo = [f for f in todo if filtered[f] not in drawn and settings[f][0] <= 0]
            if not todo:
                break
        for f, j in enumerate(filtered):  # the rows left undrawn: filtered over the whole row
            if j not in drawn:
                scaled[j] = filter_logits(scaled[j], *settings[f])
    rest = [j for j in range(len(sampled)) if j not in drawn]
    if rest:
        # float64 sums: u * total stays below the total, so the search never runs off the end.
        cdf = _weights(scaled if len(rest) == len(sampled) else scaled[rest]).double()
        cdf = cdf.cumsum_(-1)  # (R, V)
        draw = (u[rest] * cdf[:, -1])[:, None]  # (R, 1)
        # right=True: the first token whose cumulative mass exceeds the draw, so a token of
        # zero probability (filtered out) is never picked.
        found = torch.searchsorted(cdf, draw, right=True).squeeze(-1).clamp(max=vocab - 1)
        drawn.update(zip(rest, found.tolist(), strict=True))
    for j, i in enumerate(sampled):
        tokens[i] = drawn[j]
    return tokens


def _draw_filtered(
    scaled: torch.Tensor, settings: list[tuple[int, float]], u: torch.Tensor, candidates: int
) -> dict[int, int]:
    """Draw the rows of ``scaled`` (F, V) with their (top_k, top_p) among their few most likely
    tokens; {row: token} for the rows drawn. A row is left out (for the caller to filter whole)
    when its top-k boundary is tied (:func:`filter_logits` keeps every token equal to the k-th)
    or, without top-k, when its ``candidates`` most likely tokens do not reach top-p."""
    vocab = scaled.shape[-1]
    ks = [k if 0 < k < vocab else 0 for k, _ in settings]
    width = max(k or min(vocab, candidates) for k in ks)
    # One more than the widest top-k: the (k+1)-th value shows whether the k-th is tied.
    values, ids = torch.topk(scaled, min(width + 1, vocab), dim=-1)  # most likely first
    has_k = torch.tensor([k > 0 for k in ks])
    k = torch.tensor([k or width for k in ks])  # (F,)
    in_k = torch.arange(values.shape[-1])[None, :] < k[:, None]  # (F, W + 1)
    # The probabilities top-p reads: renormalised over the top-k when there is one (as
    # filter_logits's softmax of the filtered row), over the whole vocabulary otherwise.
    probs = torch.exp(values - values[:, :1]).masked_fill_(~in_k, 0.0)  # (F, W + 1)
    total = probs.sum(-1)  # (F,)
    if not all(ks):  # a pass over the whole rows only where one has no top-k
        total = torch.where(has_k, total, _weights(scaled).sum(-1))
    probs /= total[:, None]
    top_p = torch.tensor([p if p < 1.0 else float("inf") for _, p in settings])
    mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely candidates
    keep = in_k & (mass_before < top_p[:, None])
    keep[:, 0] = True  # the most likely token always survives
    beyond = values.gather(1, k[:, None].clamp(max=values.shape[-1] - 1)).squeeze(-1)
    tied = has_k & (k < vocab) & (beyond == values.gather(1, (k - 1)[:, None]).squeeze(-1))
    short = ~has_k & (probs.sum(-1) < top_p)
    # Kept tokens in vocabulary order, as in a CDF over the whole filtered row.
    order_ids, order = torch.where(keep, ids, vocab).sort(dim=-1)
    cdf = (probs * keep).gather(1, order).double().cumsum(-1)  # (F, W + 1)
    draw = (u * cdf[:, -1])[:, None]
    at = torch.searchsorted(cdf, draw, right=True).squeeze(-1)
    at = torch.minimum(at, keep.sum(-1) - 1)  # never a dropped candidate
    found = order_ids.gather(1, at[:, None]).squeeze(-1).tolist()
    left_out = (tied | short).tolist()
    return {f: token for f, token in enumerate(found) if not left_out[f]}

"""Compute the tokens a batch's rows share once, instead of once per row: a prefix tree.

Tuning datasets repeat their instructions: Vertex's formats put the same ``systemInstruction``
(or system message) on every line, and a chat template adds the same header in front of it.
In examples/ticket-routing-chat, 31 of the 66 tokens of an average example are the same in
every example. Preference data repeats more: the chosen and rejected answers of a pair follow
the same prompt, and often begin alike ("26 plus 4 is 30." and "26 plus 4 is 30. A number
line..."); an RL step samples k answers to each prompt. A causal model's hidden states over
tokens rows share do not depend on what comes after them, so each shared run of tokens needs
computing once.

The batch is packed as one sequence of *segments*, the edges of the prefix tree of its rows:
a run of tokens that several rows share (the chat header all rows share, a pair's prompt, the
start two answers share) is one segment, and so is each row's own rest. Every token keeps its
own position id, and no padding is packed: per-token layers (linear layers, norms, MLP, rotary)
run on the tree's tokens instead of rows x longest row. Attention, which has to know the layout,
is computed by the fused LoRA path (tunelab.training.fused_lora): each segment's tokens attend
to all of their ancestor segments and causally to their own segment. Segments are attended in a
few groups of similar shape (:func:`attention_groups`), each padded only to its own longest
segment and context: one batch of segments padded to the longest of all computed ~2.8x the
attention cells a preference batch needs (a 1-token segment padded to a 27-token answer's
queries over its 70 keys). The shared segments' keys and values are gathered into every row
that reads them, so the backward sums those rows' gradients into the one copy: the loss and
every gradient are those of the unpacked batch, up to float summation order
(tests/training/test_prefix_sharing.py).

The training forward hands back every row's hidden states as a ``(B, T - p, C)`` tensor (each
row's tokens gathered from the segments that hold them), from ``p``, the prefix every row shares
before its first training target: a loss over ``input_ids[:, p:]`` is the loss of the batch.

A row's tokens end at its last training target (``loss_mask``): under a causal mask nothing
before them depends on what follows, and the padding after them is never computed.

``row_multiple`` rounds the token count the linear layers see up to a multiple (dead tokens at
the end of a packed batch, right padding otherwise), for kernels that are generated per shape:
see tunelab.training.precision.matmul_row_multiple.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from math import gcd

import numpy as np
import torch

from tunelab.data.batching import Batch
from tunelab.losses.lm import completion_loss
from tunelab.training.fused_lora import gather_rows

MIN_SHARED_TOKENS = 8
"""A run of tokens is computed once when that saves at least this many token computations
((rows sharing it - 1) x its length): a smaller saving is less than its attention segment and
the packing cost."""


ATTENTION_CALL_CELLS = 1024
"""What one more attention call costs, in attention cells (query x key pairs per head): its
fixed costs (the call, three gathers, the mask) measured against its per-cell cost at a 135M
model's head size on a CPU. :func:`attention_groups` splits segments into another group only
when that saves more cells than this."""
MAX_ATTENTION_GROUPS = 4


@dataclass(frozen=True)
class AttentionGroup:
    """S segments attended in one call, each padded to the group's Lq queries and Lk keys."""

    query_index: torch.Tensor
    """(S * Lq,) int64: the packed tokens of each segment, padded to Lq with token 0."""
    key_index: torch.Tensor
    """(S * Lk,) int64: each segment's ancestors' tokens then its own, padded to Lk."""
    attention_mask: torch.Tensor
    """(S, 1, Lq, Lk) bool: what each query attends to; a padding query attends to key 0 (its
    output is dropped; a query that attends to nothing would give NaN)."""
    segments: int
    query_length: int
    key_length: int


@dataclass(frozen=True)
class KeptTokens:
    """The tokens whose final hidden states are read, one per row: the last decoder layer
    computes its attention, output projection and MLP for these only (the keys and values it
    reads are every token's), each token attending to its row's tokens up to itself."""

    positions: torch.Tensor
    """(K,) int64: their places in the packed sequence."""
    attention: AttentionGroup
    """K segments of one query each: the tokens, over their rows' tokens up to themselves."""


@dataclass(frozen=True)
class PackedBatch:
    """A batch as the segments of its prefix tree, and the index maps attention and the loss
    read it through. ``L``: packed tokens (``tokens``) plus the dead ``tail``."""

    prefix: int
    """p: tokens every row shares before its first training target; the rows' hidden states are
    handed back from there."""
    rows: int
    tokens: int
    """Tokens of the tree: what the layers compute (and ``tail`` more)."""
    input_ids: torch.Tensor
    """(1, L)"""
    position_ids: torch.Tensor
    """(1, L): each token's position in its rows; zeros in the tail."""
    row_positions: torch.Tensor
    """(B, T - p) int64: where row b's token p + t sits in the packed sequence (past the row's
    last training target: its last token, a stand-in nothing reads)."""
    groups: tuple[AttentionGroup, ...]
    """The segments, in groups attended one call each."""
    query_index: torch.Tensor
    """The groups' ``query_index`` laid end to end: every group's queries in one gather."""
    key_index: torch.Tensor
    """The groups' ``key_index`` laid end to end: every group's keys (values) in one gather."""
    output_index: torch.Tensor
    """(tokens,) int64: where each packed token's attention output is in the groups' outputs
    laid end to end (group g's S_g * Lq_g rows, segment by segment)."""
    segments: int
    tail: int = 0
    """Dead tokens after the tree, only there to round the length up: no token attends to
    them, their attention output is zero and nothing reads their hidden states."""
    keep: KeptTokens | None = None
    """Set when only some tokens' final hidden states are read (:func:`decoder_hidden_at`)."""


def shared_prefix_length(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> int:
    """Leading tokens identical in every row and ending before any loss position."""
    rows, length = input_ids.shape
    if rows < 2:
        return 0
    differs = (input_ids != input_ids[:1]).any(0).nonzero()
    common = int(differs[0]) if len(differs) else length
    targets = loss_mask.any(0).nonzero()  # token t is a target: position t - 1 carries loss
    first_target = int(targets[0]) if len(targets) else length
    return max(0, min(common, first_target - 1))


def row_lengths(loss_mask: torch.Tensor) -> np.ndarray:
    """(B,) tokens of each row up to and including its last training target (at least 1)."""
    mask = loss_mask.cpu().numpy()
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(1), last + 1, 1)


@dataclass
class _Segment:
    row: int
    """A row holding the segment's tokens (every row sharing it holds the same)."""
    start: int
    """Position of its first token in that row."""
    length: int
    parent: int
    """Index of the parent segment, -1 for none."""


def _prefix_tree(ids: np.ndarray, lengths: np.ndarray, minimum: int):
    """The segments of the rows' prefix tree, depth first, and which segment holds each row's
    token t (``owner[b, t]``, with the offset in it, ``offset[b, t]``)."""
    segments: list[_Segment] = []
    owner = np.full(ids.shape, -1, dtype=np.int64)
    offset = np.zeros(ids.shape, dtype=np.int64)

    def emit(members: list[int], start: int, length: int, parent: int) -> int:
        segments.append(_Segment(members[0], start, length, parent))
        owner[members, start : start + length] = len(segments) - 1
        offset[members, start : start + length] = np.arange(length)
        return len(segments) - 1

    def build(members: list[int], start: int, parent: int) -> None:
        # Every member holds the same tokens before ``start`` and at least one after it.
        if len(members) == 1:
            emit(members, start, int(lengths[members[0]]) - start, parent)
            return
        limit = int(lengths[members].min()) - 1  # each row keeps a token of its own
        block = ids[members, start:limit]
        differs = (block != block[:1]).any(0).nonzero()[0]
        common = int(differs[0]) if len(differs) else limit - start
        at = start + common
        if common and common * (len(members) - 1) >= minimum:
            parent, start = emit(members, start, common, parent), at
        groups: dict[int, list[int]] = {}
        for m in members:
            groups.setdefault(int(ids[m, at]), []).append(m)
        if len(groups) == 1:  # the rows are alike up to the shortest one's last token
            for m in members:
                build([m], start, parent)
            return
        for group in groups.values():
            build(group, start, parent)

    build(list(range(len(ids))), 0, -1)
    return segments, owner, offset


def pack_shared_prefix(
    batch: Batch,
    minimum: int = MIN_SHARED_TOKENS,
    row_multiple: int = 1,
    at: torch.Tensor | None = None,
) -> PackedBatch | None:
    """The batch packed as its prefix tree, or None when its rows share too little (no run of
    tokens whose sharing saves ``minimum`` token computations); its length rounded up to a
    multiple of ``row_multiple`` with dead tokens. ``at`` (B,): when given, only the final
    hidden states of row b's token ``at[b]`` are read (``keep``)."""
    rows, length = batch.input_ids.shape
    if rows < 2:
        return None
    ids = batch.input_ids.cpu().numpy()
    lengths = row_lengths(batch.loss_mask)
    segments, owner, offset = _prefix_tree(ids, lengths, minimum)
    if len(segments) == rows:  # one segment a row: nothing shared
        return None
    starts = np.cumsum([0] + [s.length for s in segments])  # packed position of each segment
    tokens = int(starts[-1])
    tail = -tokens % row_multiple
    # The ancestors of each segment, root first: its keys before its own tokens.
    context: list[list[int]] = []
    for seg in segments:
        context.append([*context[seg.parent], seg.parent] if seg.parent >= 0 else [])
    ancestors = [sum(segments[a].length for a in chain) for chain in context]
    n = len(segments)
    queries = [s.length for s in segments]
    keys = [a + s.length for a, s in zip(ancestors, segments, strict=True)]

    packed_ids = np.zeros(tokens + tail, dtype=np.int64)
    positions = np.zeros(tokens + tail, dtype=np.int64)
    output = np.zeros(tokens, dtype=np.int64)
    groups, base = [], 0  # base: where the group's outputs start in all groups' outputs
    for members in attention_groups(queries, keys, ATTENTION_CALL_CELLS, MAX_ATTENTION_GROUPS):
        lq, lk = max(queries[i] for i in members), max(keys[i] for i in members)
        query = np.zeros((len(members), lq), dtype=np.int64)
        key = np.zeros((len(members), lk), dtype=np.int64)
        mask = np.zeros((len(members), lq, lk), dtype=bool)
        for j, i in enumerate(members):
            seg = segments[i]
            own = np.arange(starts[i], starts[i] + seg.length)
            packed_ids[own] = ids[seg.row, seg.start : seg.start + seg.length]
            positions[own] = np.arange(seg.start, seg.start + seg.length)
            output[own] = base + j * lq + np.arange(seg.length)
            query[j, : seg.length] = own
            chain = [np.arange(starts[a], starts[a] + segments[a].length) for a in context[i]]
            key[j, : keys[i]] = np.concatenate([*chain, own])
            # its query q sees every ancestor token and its own tokens up to itself
            visible = ancestors[i] + np.arange(seg.length)  # (its length,): last key seen
            mask[j, : seg.length] = np.arange(lk)[None, :] <= visible[:, None]
            mask[j, seg.length :, 0] = True
        groups.append((query, key, mask, len(members), lq, lk))
        base += len(members) * lq

    prefix = shared_prefix_length(batch.input_ids, batch.loss_mask)
    where = starts[owner] + offset  # (B, T); -1 owners are past a row's end
    last = where[np.arange(rows), lengths - 1]
    past = np.arange(length)[None, :] >= lengths[:, None]
    where = np.where(past, last[:, None], where)[:, prefix:]

    device = batch.input_ids.device

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    keep = None
    if at is not None:
        at = at.cpu().numpy()
        if at.shape != (rows,) or (at < 0).any() or (at >= lengths).any():
            raise ValueError(
                f"decoder_hidden_at: positions {at.tolist()} must be one per row, each at or "
                f"before its row's last training target (row lengths {lengths.tolist()})"
            )
        # Row b's token at[b] attends to its segment's ancestors, then its own segment up to it.
        owners, offsets = owner[np.arange(rows), at], offset[np.arange(rows), at]
        contexts = [
            np.concatenate(
                [
                    *(np.arange(starts[a], starts[a] + segments[a].length) for a in context[i]),
                    np.arange(starts[i], starts[i] + o + 1),
                ]
            )
            for i, o in zip(owners, offsets, strict=True)
        ]
        lk = max(len(c) for c in contexts)
        key = np.zeros((rows, lk), dtype=np.int64)
        mask = np.zeros((rows, 1, lk), dtype=bool)
        for b, c in enumerate(contexts):
            key[b, : len(c)] = c
            mask[b, 0, : len(c)] = True
        keep = KeptTokens(
            positions=tensor(starts[owners] + offsets),
            attention=AttentionGroup(
                query_index=tensor(starts[owners] + offsets),
                key_index=tensor(key.reshape(-1)),
                attention_mask=tensor(mask)[:, None],
                segments=rows,
                query_length=1,
                key_length=lk,
            ),
        )

    return PackedBatch(
        prefix=prefix,
        rows=rows,
        tokens=tokens,
        input_ids=tensor(packed_ids)[None],
        position_ids=tensor(positions)[None],
        row_positions=tensor(where),
        query_index=tensor(np.concatenate([query.reshape(-1) for query, *_ in groups])),
        key_index=tensor(np.concatenate([key.reshape(-1) for _, key, *_ in groups])),
        groups=tuple(
            AttentionGroup(
                query_index=tensor(query.reshape(-1)),
                key_index=tensor(key.reshape(-1)),
                attention_mask=tensor(mask)[:, None],
                segments=count,
                query_length=lq,
                key_length=lk,
            )
            for query, key, mask, count, lq, lk in groups
        ),
        output_index=tensor(output),
        segments=n,
        tail=tail,
        keep=keep,
    )


def attention_groups(
    queries: list[int],
    keys: list[int],
    call_cells: int = ATTENTION_CALL_CELLS,
    max_groups: int = MAX_ATTENTION_GROUPS,
) -> list[list[int]]:
    """The segments (``queries[i]`` tokens over ``keys[i]`` keys each) split into at most
    ``max_groups`` groups that minimise the attention cells computed, each group padded to its
    longest segment and context, plus ``call_cells`` per group for its call.

    Segments sorted by query length are cut into contiguous runs by dynamic programming: a
    preference batch's segments come in few shapes (the shared header, prompts, answers, the
    one-token forks between them), which such runs separate.
    """
    order = sorted(range(len(queries)), key=lambda i: (queries[i], keys[i]))
    n = len(order)
    # cost[a][b]: order[a:b] as one group (its longest queries are its last segment's)
    cost = [[0] * (n + 1) for _ in range(n + 1)]
    for a in range(n):
        longest_keys = 0
        for b in range(a + 1, n + 1):
            longest_keys = max(longest_keys, keys[order[b - 1]])
            cost[a][b] = (b - a) * queries[order[b - 1]] * longest_keys + call_cells
    # best[g][b]: the cheapest split of order[:b] into g + 1 groups, as (cells, last cut)
    inf = (float("inf"), 0)
    best = [[inf] + [(cost[0][b], 0) for b in range(1, n + 1)]]
    for _ in range(1, min(max_groups, n)):
        prev = best[-1]
        best.append(
            [inf]
            + [
                min(((prev[a][0] + cost[a][b], a) for a in range(1, b)), default=inf)
                for b in range(1, n + 1)
            ]
        )
    last = min(range(len(best)), key=lambda g: best[g][n][0])
    groups, b = [], n
    for g in range(last, -1, -1):
        a = best[g][b][1]
        groups.append(order[a:b])
        b = a
    return groups[::-1]


def pad_rows(batch: Batch, row_multiple: int) -> Batch:
    """The batch right-padded (no loss, no attention from real tokens under the causal mask) so
    that rows x length is a multiple of ``row_multiple``."""
    rows, length = batch.input_ids.shape
    step = row_multiple // gcd(rows, row_multiple)
    extra = -length % step
    if not extra:
        return batch
    return replace(
        batch,
        input_ids=torch.nn.functional.pad(batch.input_ids, (0, extra)),
        loss_mask=torch.nn.functional.pad(batch.loss_mask, (0, extra)),
    )


@contextmanager
def sharing_prefix(model: torch.nn.Module, packed: PackedBatch) -> Iterator[None]:
    """Tell the fused attention layers the packed layout for one forward (and its backward,
    which needs no layout)."""
    layers = _fused_attention(model)
    for attention in layers:
        attention.shared_prefix = packed
    try:
        yield
    finally:
        for attention in layers:
            attention.shared_prefix = None


def can_share_prefix(model: torch.nn.Module) -> bool:
    """Whether the model's attention can compute a packed batch: the fused LoRA path on SDPA."""
    layers = _fused_attention(model)
    return bool(layers) and all(attention.sdpa for attention in layers)


def decoder_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    share_prefix: bool,
    row_multiple: int = 1,
) -> tuple[torch.Tensor, int]:
    """The training step's forward: final hidden states ``(B, T - offset, C)`` of the rows of
    ``input_ids`` (B, T) from position ``offset`` on, where ``offset`` is the prompt prefix
    every row shares (0 when ``share_prefix`` is off or the batch shares too little). Packed,
    every run of tokens rows share is computed once (see the module's docstring).

    Every position whose next token is in ``loss_mask``, and every later one, lies at or after
    ``offset``: a loss over ``input_ids[:, offset:]`` and ``loss_mask[:, offset:]`` is the loss
    of the whole batch. Packed, a row's hidden states after its last target are stand-ins: read
    only positions up to a row's last target. The tokens the linear layers see are rounded up
    to a multiple of ``row_multiple``.
    """
    decoder = model.get_decoder()
    batch = Batch(input_ids, loss_mask, tokens=0)
    packed = pack_shared_prefix(batch, MIN_SHARED_TOKENS, row_multiple) if share_prefix else None
    if packed is None:
        padded = pad_rows(batch, row_multiple).input_ids
        hidden = decoder(input_ids=padded).last_hidden_state  # (B, T + pad, C)
        return (hidden if padded.shape == input_ids.shape else hidden[:, : input_ids.shape[1]]), 0
    with sharing_prefix(model, packed):
        out = decoder(input_ids=packed.input_ids, position_ids=packed.position_ids)
    # Each row's states gathered from the segments holding them: the backward sums the rows'
    # gradients of a shared token into its one copy.
    rows = gather_rows(out.last_hidden_state[0], packed.row_positions.reshape(-1))
    return rows.view(*packed.row_positions.shape, -1), packed.prefix


def decoder_hidden_at(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    at: torch.Tensor,
    share_prefix: bool,
    row_multiple: int = 1,
) -> torch.Tensor:
    """(B, C): the final hidden state of each row's token ``at[b]`` (at or before its last
    training target), as :func:`decoder_hidden` computes it. Packed, the last decoder layer
    computes only these tokens (tunelab.training.fused_lora): a reward model reads one state a
    row, and every other token of that layer (attention, output projection, MLP) would be
    computed for nothing."""
    batch = Batch(input_ids, loss_mask, tokens=0)
    packed = None
    if share_prefix:
        packed = pack_shared_prefix(batch, MIN_SHARED_TOKENS, row_multiple, at=at)
    if packed is None:
        hidden, offset = decoder_hidden(model, input_ids, loss_mask, False, row_multiple)
        return hidden[torch.arange(len(at), device=hidden.device), at - offset]
    with sharing_prefix(model, packed):
        out = model.get_decoder()(input_ids=packed.input_ids, position_ids=packed.position_ids)
    hidden = out.last_hidden_state[0]  # (B, C): the last layer computed the kept tokens only
    if hidden.shape[0] != len(at):  # (L, C): a last layer without the fused forward; L > B
        hidden = gather_rows(hidden, packed.keep.positions)
    return hidden


def completion_loss_of(
    model: torch.nn.Module, batch: Batch, share_prefix: bool, row_multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Completion loss of the batch through :func:`decoder_hidden`."""
    head = model.get_output_embeddings()
    hidden, p = decoder_hidden(model, batch.input_ids, batch.loss_mask, share_prefix, row_multiple)
    return completion_loss(hidden, head, batch.input_ids[:, p:], batch.loss_mask[:, p:])


def _fused_attention(model: torch.nn.Module) -> list:
    from tunelab.training.fused_lora import _FusedAttentionForward

    decoder = model.get_decoder()
    forwards = [vars(layer.self_attn).get("forward") for layer in decoder.layers]
    if not all(isinstance(f, _FusedAttentionForward) for f in forwards):
        return []
    return forwards

"""Compute the prompt prefix a batch's examples share once, instead of once per example.

Tuning datasets repeat their instructions: Vertex's formats put the same ``systemInstruction``
(or system message) on every line, and a chat template adds the same header in front of it.
In examples/ticket-routing-chat, 31 of the 66 tokens of an average example are the same in
every example. A causal model's hidden states over a shared prefix do not depend on what comes
after it, so in a batch of B examples the prefix's B copies compute B identical results.

The batch is packed as one sequence, ``[prefix (P) | suffix of row 1 (S) | ... | row B (S)]``
(suffixes right-padded to the longest, as before), with each token's own position id. Every
per-token layer (linear layers, norms, MLP, rotary) runs on P + B*S tokens instead of B*(P+S).
Attention, which has to know the layout, is computed by the fused LoRA path
(tunelab.training.fused_lora): the prefix attends causally to itself and every suffix attends
to the whole prefix and causally to itself. The prefix's keys and values are broadcast to the
rows, so the backward sums the rows' gradients into them: the loss and every gradient are those
of the unpacked batch, up to float summation order (tests/training/test_prefix_sharing.py).

The prefix stops before the first position whose next token is a training target in any row,
so every loss position lies in a suffix and the loss is the plain completion loss over them.

``row_multiple`` rounds the token count the linear layers see up to a multiple (dead tokens at
the end of a packed batch, right padding otherwise), for kernels that are generated per shape:
see tunelab.training.precision.matmul_row_multiple.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from math import gcd

import torch

from tunelab.data.batching import Batch
from tunelab.losses.lm import completion_loss

MIN_SHARED_PREFIX = 8
"""Tokens; a shorter shared prefix saves less than the packing and the split attention cost."""


@dataclass(frozen=True)
class PackedBatch:
    prefix: int
    """P: tokens every row shares, computed once."""
    rows: int
    suffix: int
    """S: the longest row's tokens after the prefix; shorter rows are right-padded to it."""
    input_ids: torch.Tensor
    """(1, P + B*S + tail)"""
    position_ids: torch.Tensor
    """(1, P + B*S + tail): 0..P-1, then P..P+S-1 for every row, then zeros."""
    suffix_mask: torch.Tensor
    """(1, 1, S, P + S) bool, what a suffix token attends to: every prefix token, then its own
    row's tokens up to itself. The same for every row and every layer."""
    tail: int = 0
    """Dead tokens after the last row, only there to round the length up: no token attends to
    them, their attention output is zero and nothing reads their hidden states."""

    @property
    def packed_rows_end(self) -> int:
        """P + B*S: where the rows end and the tail starts."""
        return self.prefix + self.rows * self.suffix


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


def pack_shared_prefix(
    batch: Batch, minimum: int = MIN_SHARED_PREFIX, row_multiple: int = 1
) -> PackedBatch | None:
    """The batch packed around its shared prefix, or None when it shares too little; its
    length rounded up to a multiple of ``row_multiple`` with dead tokens."""
    prefix = shared_prefix_length(batch.input_ids, batch.loss_mask)
    if prefix < minimum:
        return None
    rows, length = batch.input_ids.shape
    suffix = length - prefix
    tail = -(prefix + rows * suffix) % row_multiple
    ids = torch.cat(
        [
            batch.input_ids[0, :prefix],
            batch.input_ids[:, prefix:].reshape(-1),
            batch.input_ids.new_zeros(tail),
        ]
    )
    device = batch.input_ids.device
    positions = torch.cat(
        [
            torch.arange(prefix, device=device),
            torch.arange(prefix, length, device=device).repeat(rows),
            torch.zeros(tail, dtype=torch.long, device=device),
        ]
    )
    mask = torch.ones(suffix, prefix + suffix, dtype=torch.bool, device=device)
    mask[:, prefix:] = torch.ones(suffix, suffix, dtype=torch.bool, device=device).tril()
    return PackedBatch(prefix, rows, suffix, ids[None], positions[None], mask[None, None], tail)


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
    ``input_ids`` (B, T) from position ``offset`` on, where ``offset`` is the shared prompt
    prefix computed once (0 when ``share_prefix`` is off or the batch shares too little).

    Every position whose next token is in ``loss_mask``, and every later one, lies at or after
    ``offset``: a loss over ``input_ids[:, offset:]`` and ``loss_mask[:, offset:]`` is the loss
    of the whole batch. The tokens the linear layers see are rounded up to a multiple of
    ``row_multiple``.
    """
    decoder = model.get_decoder()
    batch = Batch(input_ids, loss_mask, tokens=0)
    packed = pack_shared_prefix(batch, row_multiple=row_multiple) if share_prefix else None
    if packed is None:
        padded = pad_rows(batch, row_multiple).input_ids
        hidden = decoder(input_ids=padded).last_hidden_state  # (B, T + pad, C)
        return (hidden if padded.shape == input_ids.shape else hidden[:, : input_ids.shape[1]]), 0
    with sharing_prefix(model, packed):
        out = decoder(input_ids=packed.input_ids, position_ids=packed.position_ids)
    p, rows_end = packed.prefix, packed.packed_rows_end
    return out.last_hidden_state[0, p:rows_end].unflatten(0, (packed.rows, packed.suffix)), p


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

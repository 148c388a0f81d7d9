"""Batches for training: grouped by length so that almost no compute is spent on padding.

Short chat examples vary a lot in length; a batch padded to its longest member wastes most of
its compute when lengths are drawn at random. Like ``group_by_length`` samplers, we shuffle the
examples, cut the shuffled list into windows of ``window_batches`` batches, sort each window by
length, cut it into batches and shuffle the batches: the order stays random, the padding small.

The order is a pure function of ``(seed, epoch)``, so a resumed run replays exactly the batches
an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tunelab.data.template import Encoded


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    """(B, T) int64, right-padded with ``pad_id``."""
    loss_mask: torch.Tensor
    """(B, T) bool, True at tokens that are training targets (model turns)."""
    tokens: int
    """Real (non-padding) tokens in the batch."""


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, window_batches: int = 32
) -> list[list[int]]:
    """Indices of the examples in each batch of one epoch, in the order they are trained."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    lengths_arr = np.asarray(lengths)
    window = batch_size * window_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths_arr[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def collate(examples: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-pad to the longest example. Right padding needs no attention mask under a causal
    mask: real tokens never attend to the padding after them, and padded positions carry no loss."""
    longest = max(len(e.input_ids) for e in examples)
    ids = np.full((len(examples), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(examples), longest), dtype=bool)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = e.input_ids
        mask[row, : len(e.loss_mask)] = e.loss_mask
    return Batch(
        input_ids=torch.from_numpy(ids),
        loss_mask=torch.from_numpy(mask),
        tokens=sum(len(e.input_ids) for e in examples),
    )

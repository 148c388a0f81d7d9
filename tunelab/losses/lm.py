"""Completion-only language-model loss, computing logits only where there is a target.

For a causal LM the hidden state at position t predicts token t+1, so the loss is

    L = -(1/N) * sum_{t : m[t+1]} log softmax(W h_t)[x_{t+1}]

over the N positions whose *next* token is a model-turn token (``m`` is the loss mask).
The output projection ``W`` (vocab x hidden; 49k x 576 for SmolLM2) is the single largest matmul
in a small model, and a full ``(B, T, V)`` logits tensor is mostly spent on prompt positions
that carry no loss. Selecting the N target positions first and projecting only those removes
that work: on short chat examples where answers are a few tokens, it is most of the head's cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def target_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """(B, T-1) bool: positions t whose next token t+1 is a training target."""
    return loss_mask[:, 1:]


def completion_loss(
    hidden: torch.Tensor, lm_head: torch.nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean cross-entropy over target tokens.

    hidden: (B, T, C) final hidden states; input_ids, loss_mask: (B, T).
    Returns (loss, correct next-token predictions as a count tensor, number of targets).
    """
    select = target_positions(loss_mask)  # (B, T-1)
    h = hidden[:, :-1][select]  # (N, C)
    targets = input_ids[:, 1:][select]  # (N,)
    logits = lm_head(h).float()  # (N, V)
    loss = F.cross_entropy(logits, targets)
    correct = (logits.detach().argmax(-1) == targets).sum()
    return loss, correct, int(targets.numel())

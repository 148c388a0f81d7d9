"""The reward model's scalar head: the score of a sequence is ``w . h_last``, the final hidden
state at its last real token (an answer's end-of-turn token; see
:func:`tunelab.data.preference.ended`) times one weight vector.

It lives beside the LoRA adapter of a reward-model bundle as ``reward_head.safetensors``; the
RL stage loads that adapter as a second named adapter on the policy's own base model and the
head from here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HEAD_FILE = "reward_head.safetensors"
"""The scalar head's weight, (1, hidden_size), beside the LoRA adapter in the bundle."""


def new_head(width: int) -> torch.nn.Linear:
    """A head that scores every answer 0 (the pairwise loss ignores a bias: none)."""
    head = torch.nn.Linear(width, 1, bias=False)
    torch.nn.init.zeros_(head.weight)
    return head


def rewards_at(head: torch.nn.Module, hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B,) rewards from final hidden states (B, T, C) at positions ``last`` (B,)."""
    rows = torch.arange(len(hidden), device=hidden.device)
    return head(hidden[rows, last]).squeeze(-1).float()


def score(
    model, head: torch.nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """(B,) rewards: the head on the final hidden state at each sequence's last real token.

    input_ids: (B, T) right-padded (no attention mask needed under a causal mask); lengths: (B,).
    Runs with whichever adapter is active on ``model``.
    """
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state  # (B, T, C)
    return rewards_at(head, hidden, lengths - 1)


def save_head(head: torch.nn.Linear, folder: Path) -> None:
    save_file({"weight": head.weight.detach().contiguous()}, folder / HEAD_FILE)


def load_head(bundle_dir: Path) -> torch.nn.Linear:
    """The frozen head of a reward-model bundle."""
    weight = load_file(bundle_dir / HEAD_FILE)["weight"]  # (1, C)
    head = torch.nn.Linear(weight.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    head.requires_grad_(False)
    return head

"""The pairwise (Bradley-Terry) loss of a reward model, and its pairwise accuracy.

Bradley & Terry (1952) model the probability that answer ``w`` is preferred to ``l`` as
``sigma(r_w - r_l)``; fitting a reward model ``r`` to human choices by maximum likelihood gives
(Christiano et al. 2017; Ouyang et al. 2022, eq. 1)

    L = -(1/B) * sum_b log sigma(r(x_b, y_w,b) - r(x_b, y_l,b))

Only differences of rewards enter, so a constant added to every reward changes nothing (which is
why the reward head needs no bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean -log sigma(r_chosen - r_rejected) over the batch. chosen, rejected: (B,) rewards."""
    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs whose preferred answer gets the strictly higher reward."""
    return (chosen > rejected).float().mean().item()

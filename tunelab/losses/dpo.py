"""Direct preference optimisation (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model", eq. 7).

With ``pi`` the policy, ``pi_ref`` the reference, ``y_w``/``y_l`` the preferred/rejected answers
to prompt ``x`` and ``log pi(y|x)`` the sum of the answer tokens' log-probabilities:

    h     = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
    L_DPO = -(1/B) * sum_b log sigma(beta * h_b)

``beta * (log pi(y|x) - log pi_ref(y|x))`` is the "implicit reward" of an answer; its difference
between the two answers is the reward margin, and the share of pairs with a positive margin is
the reward accuracy, which is what DPO trainers report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DPOTerms:
    loss: torch.Tensor
    """Scalar mean loss."""
    chosen_rewards: torch.Tensor
    """(B,) beta * (log pi(y_w) - log pi_ref(y_w)), detached."""
    rejected_rewards: torch.Tensor
    """(B,) beta * (log pi(y_l) - log pi_ref(y_l)), detached."""

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        return (self.margins > 0).float().mean().item()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> DPOTerms:
    """All inputs (B,) summed answer log-probabilities; the reference ones carry no gradient."""
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return DPOTerms(loss, beta * chosen.detach(), beta * rejected.detach())

"""Group-relative policy optimisation maths for reinforcement fine-tuning with graders.

GRPO (Shao et al. 2024, "DeepSeekMath", sec. 4.1) samples a group of ``k`` answers per prompt,
scores each, and uses the group itself as the baseline (no value network):

    A_i = (r_i - mean(r_1..r_k)) / (std(r_1..r_k) + eps)       (the division is optional)
    L   = mean_i [ -A_i * 1/|y_i| sum_t log pi(y_i,t | .)  +  beta * 1/|y_i| sum_t KL_i,t ]
    KL_i,t = exp(q) - q - 1,   q = log pi_ref(y_i,t | .) - log pi(y_i,t | .)

One gradient step per fresh batch keeps the samples on-policy, so the importance ratio of
GRPO's clipped surrogate is 1 and its gradient is the plain REINFORCE term above. The KL term
is Schulman's "k3" estimator (unbiased, always >= 0) of KL(pi || pi_ref) per token, applied in
the loss rather than subtracted from the reward, so a grader's pass/fail signal stays clean.
A group whose answers all score the same has zero advantages and teaches nothing but the KL.
Dividing by the group's std (Dr. GRPO, Liu et al. 2025, argues against it) weights prompts
where the group disagrees slightly as much as those where it disagrees a lot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

STD_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """(P, k) rewards -> (P, k) advantages: minus the group mean, optionally over its std
    (unbiased, as TRL's GRPOTrainer). Each row sums to zero."""
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale:
        return centered
    return centered / (rewards.std(dim=-1, keepdim=True) + STD_EPS)


def token_logprobs(
    hidden: torch.Tensor, head: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(B, T-1) log pi(x_{t+1} | x_{<=t}) where ``mask[:, t+1]``, 0 elsewhere.

    hidden: (B, T, C); input_ids, mask: (B, T). Logits only at the counted positions."""
    select = mask[:, 1:]  # (B, T-1)
    logits = head(hidden[:, :-1][select]).float()  # (N, V)
    picked = -F.cross_entropy(logits, input_ids[:, 1:][select], reduction="none")  # (N,)
    out = torch.zeros(select.shape, dtype=picked.dtype)
    return out.masked_scatter(select, picked)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token exp(q) - q - 1 with q = ref - policy (0 where both are 0, i.e. unmasked)."""
    q = ref_logps - logps
    return torch.exp(q) - q - 1


def grpo_loss(
    logps: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coeff: float = 0.0,
) -> torch.Tensor:
    """logps, mask, kl: (B, T-1) per token; advantages: (B,) constants. The per-answer mean
    over its tokens, then the mean over answers (GRPO's 1/|y_i| normalisation)."""
    counts = mask.sum(-1).clamp(min=1)  # (B,)
    policy_term = -(advantages.detach() * (logps * mask).sum(-1) / counts)
    if kl is not None and kl_coeff:
        policy_term = policy_term + kl_coeff * (kl * mask).sum(-1) / counts
    return policy_term.mean()

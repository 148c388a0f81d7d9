"""Reinforcement-learning maths for RLHF: answer log-probabilities, the KL penalty to the
reference, and RLOO's leave-one-out advantages and policy-gradient loss.

RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
Learning from Human Feedback in LLMs"; Kool et al. 2019 for the estimator) samples ``k`` answers
``y_1..y_k`` per prompt ``x`` and treats each whole answer as one action. Its reward is the
reward model's score minus a KL penalty to the reference policy (Ziegler et al. 2019; Stiennon
et al. 2020):

    R_i   = r(x, y_i) - kl_coeff * KL_i,    KL_i = sum_t [log pi(y_i,t | .) - log pi_ref(y_i,t | .)]
    A_i   = R_i - 1/(k-1) * sum_{j != i} R_j                      (leave-one-out baseline)
    L     = -(1/(P k)) * sum_{prompts} sum_i A_i * log pi(y_i | x)

``KL_i`` is the single-sample ("k1") estimate of KL(pi(.|x) || pi_ref(.|x)): unbiased when
``y_i ~ pi``, and its mean over samples is the KL reported per step. The baseline of each answer
is the mean reward of the *other* answers to the same prompt, so it is independent of ``y_i`` and
the gradient stays unbiased, with no value network to train (PPO's critic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logprobs(
    hidden: torch.Tensor, head: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(B,) sum of log pi(x_{t+1} | x_{<=t}) over the tokens ``t+1`` where ``mask`` is True.

    hidden: (B, T, C) final hidden states; input_ids, mask: (B, T). Like the supervised loss,
    logits are computed only at the N positions whose next token is counted, not over the
    whole vocabulary at every position. ``head``: the output projection, or an object with a
    ``target_logprobs(h, targets)`` method that computes the log-probabilities itself (the bf16
    head of tunelab.training.output_head, which a bf16 run's fast path hands out).
    """
    select = mask[:, 1:]  # (B, T-1): position t predicts token t+1
    h, targets = hidden[:, :-1][select], input_ids[:, 1:][select]  # (N, C), (N,)
    if hasattr(head, "target_logprobs"):  # a head that computes them its own way (bf16)
        token_logps = head.target_logprobs(h, targets)  # (N,)
    else:
        token_logps = -F.cross_entropy(head(h).float(), targets, reduction="none")  # (N,)
    device = token_logps.device
    rows = torch.arange(len(input_ids), device=device).unsqueeze(1).expand_as(select)[select]
    sums = torch.zeros(len(input_ids), dtype=token_logps.dtype, device=device)  # (B,)
    return sums.index_add(0, rows, token_logps)


def kl_penalty(logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """(B,) per-answer KL estimate: sum_t log pi - log pi_ref (inputs: summed log-probs)."""
    return logprobs - reference_logprobs


def penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coeff: float) -> torch.Tensor:
    """R = r - kl_coeff * KL, per answer."""
    return scores - kl_coeff * kl


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, k) rewards of k answers per prompt -> (P, k) leave-one-out advantages.

    A_i = R_i - (sum_j R_j - R_i) / (k - 1). They sum to zero over each prompt's answers.
    """
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    baseline = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def rloo_loss(logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the RLOO baseline: -mean(A_i * log pi(y_i|x)); advantages are constants."""
    return -(advantages.detach() * logprobs).mean()

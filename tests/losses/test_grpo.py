"""GRPO maths against numbers worked out by hand."""

import math

import pytest
import torch

from tunelab.losses.grpo import group_advantages, grpo_loss, k3_kl, token_logprobs


def test_group_advantages_center_and_scale():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    centered = group_advantages(rewards, scale=False)
    assert centered.tolist() == [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]]
    scaled = group_advantages(rewards, scale=True)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
    assert scaled[0].tolist() == pytest.approx(
        [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1
        + [
            -0.5 / (std + 1e-4),
            0.5 / (std + 1e-4),
        ]
    )
    assert scaled[1].tolist() == [0, 0, 0, 0]  # a flat group teaches nothing


def test_k3_kl_is_zero_at_equal_policies_and_positive_elsewhere():
    logps = torch.tensor([[-1.0, -2.0]])
    assert k3_kl(logps, logps).tolist() == [[0.0, 0.0]]
    q = -0.5  # ref - policy
    assert k3_kl(torch.tensor([[-1.0]]), torch.tensor([[-1.5]])).item() == pytest.approx(
        math.exp(q) - q - 1
    )


def test_grpo_loss_is_the_per_answer_token_mean():
    logps = torch.tensor([[-1.0, -3.0, 0.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    # answer 0: -(1 * (-4 / 2)) = 2; answer 1: -(-1 * (-2 / 1)) = -2; mean 0
    assert grpo_loss(logps, mask, adv).item() == pytest.approx(0.0)
    kl = torch.tensor([[0.2, 0.4, 9.0], [0.6, 9.0, 9.0]])  # unmasked entries must not count
    # + 0.5 * mean(0.3, 0.6)
    assert grpo_loss(logps, mask, adv, kl, 0.5).item() == pytest.approx(0.5 * 0.45)


def test_token_logprobs_masks_and_matches_log_softmax():
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    ids = torch.tensor([[1, 2, 3, 4], [0, 1, 2, 0]])
    mask = torch.tensor([[False, False, True, True], [False, True, True, False]])
    out = token_logprobs(hidden, head, ids, mask)
    full = torch.log_softmax(head(hidden[:, :-1]), -1).gather(-1, ids[:, 1:, None])[..., 0]
    expected = torch.where(mask[:, 1:], full, torch.zeros_like(full))
    torch.testing.assert_close(out, expected)

"""RLOO advantages and loss, the KL penalty and answer log-probabilities, against numbers
worked out by hand."""

import math

import pytest
import torch

from tunelab.losses.rl import (
    kl_penalty,
    penalized_rewards,
    rloo_advantages,
    rloo_loss,
    sequence_logprobs,
)


def test_rloo_advantages_by_hand():
    # k = 4, rewards 1, 2, 3, 6 (sum 12): baselines (12 - r_i) / 3 = 11/3, 10/3, 3, 2
    adv = rloo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0]]))
    assert adv.sum().item() == pytest.approx(0.0, abs=1e-6)


def test_rloo_advantages_per_prompt_and_k_two():
    # with k = 2 each answer's baseline is the other answer's reward
    adv = rloo_advantages(torch.tensor([[1.0, 3.0], [5.0, 5.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-2.0, 2.0], [0.0, 0.0]]))
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([[1.0]]))


def test_rloo_loss_by_hand():
    logps = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    adv = torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0])
    loss = rloo_loss(logps, adv)
    # -mean(A * logp) = -(8/3 + 8/3 + 0 - 16) / 4 = 8/3
    assert loss.item() == pytest.approx(8 / 3, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logps.grad, -adv / 4)  # raise log pi where A > 0


def test_kl_penalty_and_penalised_rewards_by_hand():
    kl = kl_penalty(torch.tensor([-5.0, -6.0]), torch.tensor([-5.5, -5.0]))
    torch.testing.assert_close(kl, torch.tensor([0.5, -1.0]))
    rewards = penalized_rewards(torch.tensor([1.0, 2.0]), kl, kl_coeff=0.1)
    torch.testing.assert_close(rewards, torch.tensor([0.95, 2.1]))


def test_sequence_logprobs_by_hand():
    """Identity head, so hidden states are the logits. Position t predicts token t+1."""
    head = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    ln2 = math.log(2)
    hidden = torch.zeros(2, 4, 3)
    hidden[0, 1] = torch.tensor([0.0, 0.0, ln2])  # p = (1/4, 1/4, 1/2): predicts token 2 -> 1/2
    hidden[0, 2] = torch.tensor([0.0, 0.0, 0.0])  # uniform: predicts token 0 -> 1/3
    hidden[1, 0] = torch.tensor([ln2, 0.0, 0.0])  # p = (1/2, 1/4, 1/4): predicts token 1 -> 1/4
    input_ids = torch.tensor([[0, 1, 2, 0], [1, 1, 0, 0]])
    mask = torch.tensor([[False, False, True, True], [False, True, False, False]])
    logps = sequence_logprobs(hidden, head, input_ids, mask)
    torch.testing.assert_close(logps, torch.tensor([math.log(1 / 6), math.log(1 / 4)]))

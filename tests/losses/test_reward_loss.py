"""The pairwise (Bradley-Terry) loss against numbers worked out by hand."""

import math

import pytest
import torch

from tunelab.losses.reward import pairwise_accuracy, pairwise_loss


def test_pairwise_loss_by_hand():
    # differences +1 and -1: -log sigma(1) = log(1 + e^-1), -log sigma(-1) = log(1 + e)
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2  # 0.8132617
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(0.8132617, abs=1e-6)
    assert pairwise_accuracy(chosen, rejected) == 0.5


def test_equal_rewards_cost_log_two_and_count_as_wrong():
    r = torch.tensor([0.3, -1.2, 4.0])
    assert pairwise_loss(r, r).item() == pytest.approx(math.log(2), abs=1e-6)
    assert pairwise_accuracy(r, r) == 0.0  # a tie is not a correct ranking


def test_only_differences_matter():
    chosen, rejected = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([0.0, 3.0, -4.0])
    shifted = pairwise_loss(chosen + 7.0, rejected + 7.0)
    assert shifted.item() == pytest.approx(pairwise_loss(chosen, rejected).item(), abs=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    pairwise_loss(chosen, rejected).backward()
    # d/dr_c [-log sigma(r_c - r_r)] = -(1 - sigma(0)) = -0.5
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)

"""The DPO loss (Rafailov et al. 2023, eq. 7) against numbers worked out by hand."""

import math

import pytest
import torch

from tunelab.losses.dpo import dpo_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_dpo_loss_by_hand():
    # h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) = (-10 + 11) - (-12 + 11) = 2
    # loss = -log sigma(beta * h) = log(1 + e^-0.2) = 0.5981389
    terms = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    assert terms.loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)), abs=1e-6)
    assert terms.loss.item() == pytest.approx(0.5981389, abs=1e-6)
    assert terms.chosen_rewards.item() == pytest.approx(0.1)  # beta * (+1)
    assert terms.rejected_rewards.item() == pytest.approx(-0.1)  # beta * (-1)
    assert terms.margins.item() == pytest.approx(0.2)
    assert terms.accuracy == 1.0


def test_policy_equal_to_reference_costs_log_two():
    logps = t(-3.0, -7.5)
    terms = dpo_loss(logps, logps + 1.0, logps, logps + 1.0, beta=0.5)
    assert terms.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert terms.accuracy == 0.0
    assert torch.equal(terms.margins, torch.zeros(2))


def test_mean_over_pairs_and_beta_scaling():
    # pair 1: h = 2 -> log(1 + e^-1) at beta 0.5; pair 2: h = -2 -> log(1 + e^1)
    terms = dpo_loss(t(-1.0, -3.0), t(-3.0, -1.0), t(0.0, 0.0), t(0.0, 0.0), beta=0.5)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert terms.loss.item() == pytest.approx(expected, abs=1e-6)
    assert terms.accuracy == 0.5


def test_reference_carries_no_gradient_and_policy_gradient_by_hand():
    chosen = t(-2.0).requires_grad_()
    rejected = t(-2.0).requires_grad_()
    dpo_loss(chosen, rejected, t(-2.0), t(-2.0), beta=0.1).loss.backward()
    # d/d logpi(y_w) [-log sigma(beta h)] = -beta * (1 - sigma(0)) = -0.05
    assert chosen.grad.item() == pytest.approx(-0.05)
    assert rejected.grad.item() == pytest.approx(0.05)

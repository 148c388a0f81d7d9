"""The training run every recipe shares: one warm-up rounding and schedule, a batch order that is
a function of the step, and a stopped run that resumes to the weights of an uninterrupted one."""

from types import SimpleNamespace

import pytest
import torch

from tunelab.training.run import (
    BatchOrder,
    TrainingInterrupted,
    TrainingRun,
    learning_rate_at,
    warmup_steps,
)


def test_warmup_rounding_is_one_rule():
    assert warmup_steps(0.0, 100) == 0
    assert warmup_steps(0.05, 10) == 1  # a positive ratio always warms up
    assert warmup_steps(0.1, 100) == 10
    assert warmup_steps(0.19, 10) == 1  # rounded down


def test_schedule_warms_up_then_decays_to_zero():
    rates = [learning_rate_at(step, 1.0, 2, 10) for step in range(10)]
    assert rates[:3] == [0.5, 1.0, 1.0]
    assert all(a > b for a, b in zip(rates[2:], rates[3:], strict=False))
    assert learning_rate_at(10, 1.0, 2, 10) == 0.0


def test_batch_order_is_a_function_of_the_step():
    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10, 11]
    order = BatchOrder(lengths, batch_size=4, seed=7)
    assert order.steps_per_epoch == 3
    first = [order.at(step) for step in range(6)]
    again = BatchOrder(lengths, batch_size=4, seed=7)
    assert [again.at(step) for step in reversed(range(6))] == first[::-1]
    assert sorted(i for batch in first[:3] for i in batch) == list(range(len(lengths)))
    assert first[:3] != first[3:]  # each epoch shuffled anew


def config():
    return SimpleNamespace(
        seed=3, base_model="none", warmup_ratio=0.2, checkpoint_every_steps=4, precision="fp32"
    )


def train(run_dir, should_stop=lambda: False):
    """A small regression trained through the run object: the loop every recipe writes."""
    run = TrainingRun(run_dir, config(), should_stop=should_stop)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    target = data @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    order = BatchOrder([1] * len(data), batch_size=5, seed=3)
    run.start(model, learning_rate=0.1, total_steps=10, order=order)
    for step in run.steps():
        rows = order.at(step)
        noise = 0.01 * torch.randn(len(rows))  # the RNG state must be restored on resume
        loss = ((model(data[rows]).squeeze(-1) + noise - target[rows]) ** 2).mean()
        run.backward_and_step(loss, tokens=len(rows))
    return run, model


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    _, straight = train(tmp_path / "straight")
    calls = iter(range(100))
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "stopped", should_stop=lambda: next(calls) >= 6)  # stop before step 7
    run, resumed = train(tmp_path / "stopped")
    assert run.resumed_from == 6 and run.step == 10
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    steps = [r["step"] for r in run.metrics.rows()]
    assert steps == list(range(1, 11))  # one metrics row per step, none replayed

"""The job's progress bar and ETA from a recipe's events (tunelab/jobs/progress.py): an
evaluation holds the bar instead of sending it back, and the ETA counts the evaluations left."""

import pytest

from tunelab.jobs.progress import evaluations_left, rate_eta, training_reporter
from tunelab.training.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_sft_like(total: int, eval_every: int, step_s: float, eval_s: float):
    """Feed the events a recipe sends (as tunelab/recipes/sft.py does) with a fake clock; return
    what the job was told: (text, progress, eta) per report."""
    clock, reports = Clock(), []
    on_progress = training_reporter(
        lambda text, p, eta: reports.append((text, p, eta)),
        start=0.05,
        share=0.85,
        eval_every=eval_every,
        min_interval=0.0,
        clock=clock,
    )
    on_progress(Progress("loading"))
    for step in range(1, total + 1):
        clock.now += step_s
        if step % eval_every == 0 or step == total:
            on_progress(Progress("evaluating", step, total))
            clock.now += eval_s
        on_progress(Progress("training", step, total))
    return reports


def test_evaluation_holds_the_bar_and_it_never_goes_backwards():
    reports = run_sft_like(total=9, eval_every=3, step_s=1.0, eval_s=10.0)
    progress = [p for _, p, _ in reports]
    assert progress == sorted(progress), progress  # the old callback dropped to 0.05 here
    evaluating = [(t, p) for t, p, _ in reports if t.startswith("evaluating")]
    assert [t for t, _ in evaluating] == [f"evaluating at step {s}/9" for s in (3, 6, 9)]
    # held where training got to: step 3 of 9 is a third of the train step's share
    assert evaluating[0][1] == pytest.approx(0.05 + 0.85 * 3 / 9)
    assert progress[-1] == pytest.approx(0.9)


def test_eta_counts_the_evaluations_still_to_come():
    reports = run_sft_like(total=9, eval_every=3, step_s=1.0, eval_s=10.0)
    etas = {t: eta for t, _, eta in reports}
    # After step 4 (one evaluation timed: 10 s; steps 1 s): 5 steps and 2 evaluations left.
    assert etas["training step 4/9"] == pytest.approx(5 * 1.0 + 2 * 10.0)
    # The recipe's own ETA, mean wall time per step so far x steps left, said 4 * 3.5 = 14 s.
    assert etas["training step 8/9"] == pytest.approx(1 * 1.0 + 1 * 10.0)
    assert etas["training step 9/9"] == pytest.approx(0.0)


def test_eta_without_validation_is_steps_only():
    clock, reports = Clock(), []
    on_progress = training_reporter(
        lambda *r: reports.append(r), 0.05, 0.85, None, min_interval=0.0, clock=clock
    )
    for step in range(1, 5):
        clock.now += 2.0
        on_progress(Progress("training", step, 10))
    assert reports[0][2] is None  # the first step only starts the clock
    assert reports[-1][2] == pytest.approx(6 * 2.0)


def test_reports_are_throttled_but_the_last_step_and_evaluations_always_go_out():
    clock, reports = Clock(), []
    on_progress = training_reporter(
        lambda *r: reports.append(r), 0.0, 1.0, 5, min_interval=1.0, clock=clock
    )
    for step in range(1, 11):
        clock.now += 0.1
        if step % 5 == 0:
            on_progress(Progress("evaluating", step, 10))
        on_progress(Progress("training", step, 10))
    texts = [t for t, _, _ in reports]
    assert "evaluating at step 5/10" in texts and "evaluating at step 10/10" in texts
    assert texts[-1] == "training step 10/10"
    assert len(reports) < 10


@pytest.mark.parametrize(
    ("step", "total", "every", "left"),
    [(0, 10, 5, 2), (4, 10, 5, 2), (5, 10, 5, 1), (0, 9, 4, 3), (8, 9, 4, 1), (9, 9, 4, 0)],
)
def test_evaluations_left(step, total, every, left):
    assert evaluations_left(step, total, every) == left
    assert evaluations_left(step, total, None) == 0


def test_rate_eta():
    assert rate_eta(0.0, 0.25, 10.0) == pytest.approx(30.0)
    assert rate_eta(0.0, 0.0, 10.0) is None


def test_metrics_are_mirrored_only_after_a_step_not_mid_evaluation():
    """The metrics mirror stores rows past the last step it has: a sync at "evaluating" would
    store step N's train row and skip the eval row appended for step N afterwards."""
    clock, phases = Clock(), []
    current = {"phase": None}
    on_progress = training_reporter(
        lambda *r: None,
        0.0,
        1.0,
        2,
        on_sync=lambda: phases.append(current["phase"]),
        min_interval=0.0,
        clock=clock,
    )
    for p in (Progress("loading"), Progress("evaluating", 2, 4), Progress("training", 2, 4)):
        current["phase"] = p.phase
        on_progress(p)
    assert phases == ["training"]

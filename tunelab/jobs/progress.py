"""A job's progress bar and ETA from its recipe's progress events.

Two things the recipes' own numbers get wrong for a job, which this module fixes once for every
pipeline:

- **Progress must not go backwards.** A recipe reports ``evaluating`` between training steps; read
  as "not training" it used to send the job's bar back to the start of the train step (22% → 5%
  → 33%). Here an evaluation holds the bar where training left it, and the bar never falls.
- **The ETA must count the evaluations still to come.** A recipe's ETA is its mean wall time per
  step so far, times the steps left: before the first evaluation it leaves evaluation out, after
  it it spreads one evaluation over every step. Here steps and evaluations are timed apart, and
  the ETA is ``step time × steps left + evaluation time × evaluations left``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tunelab.training.progress import Progress

Report = Callable[[str, float, float | None], None]


def evaluations_left(step: int, total_steps: int, eval_every: int | None) -> int:
    """In-training evaluations after ``step`` up to ``total_steps``: one every ``eval_every``
    steps, and one at the last step (as the recipes do); none without a validation set."""
    if not eval_every or step >= total_steps:
        return 0
    multiples = total_steps // eval_every - step // eval_every
    return multiples + (0 if total_steps % eval_every == 0 else 1)


class StepTimer:
    """Times training steps and in-training evaluations apart, from the events' arrival times."""

    def __init__(self, eval_every: int | None, clock: Callable[[], float] = time.monotonic):
        self.eval_every = eval_every
        self.clock = clock
        self.step_seconds = 0.0
        self.steps_timed = 0
        self.eval_seconds = 0.0
        self.evals_timed = 0
        self._last: tuple[float, int] | None = None  # (time, step) of the last event
        self._eval_started: float | None = None

    def observe(self, p: Progress) -> None:
        now = self.clock()
        if self._eval_started is not None and p.phase != "evaluating":
            # The evaluation (and a checkpoint written with it) ended when this event came.
            self.eval_seconds += now - self._eval_started
            self.evals_timed += 1
            self._eval_started = None
            self._last = (now, p.step)
            return
        if p.phase not in ("training", "evaluating"):
            return
        if self._last is not None and p.step > self._last[1]:
            self.step_seconds += now - self._last[0]
            self.steps_timed += p.step - self._last[1]
        # The first event only starts the clock: when its step began is not known.
        self._last = (now, p.step)
        if p.phase == "evaluating":
            self._eval_started = now

    def eta(self, step: int, total_steps: int) -> float | None:
        if not self.steps_timed:
            return None
        per_step = self.step_seconds / self.steps_timed
        seconds = per_step * max(0, total_steps - step)
        evals = evaluations_left(step, total_steps, self.eval_every)
        if evals:
            # Until one evaluation is timed, the best guess is the step time; it is corrected
            # as soon as the first one ends.
            per_eval = self.eval_seconds / self.evals_timed if self.evals_timed else per_step
            seconds += per_eval * evals
        return seconds


def training_reporter(
    report: Report,
    start: float,
    share: float,
    eval_every: int | None,
    label: str = "training",
    on_sync: Callable[[], None] = lambda: None,
    min_interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Progress], None]:
    """A recipe's ``on_progress`` for a pipeline step owning ``[start, start + share]`` of the
    job's bar. Reports at most once per ``min_interval`` seconds (bounding database writes on
    fast steps) plus every evaluation and the last step; ``on_sync`` runs with each report of a
    finished step (the pipelines mirror metrics then)."""
    timer = StepTimer(eval_every, clock)
    at = start
    last_report = -float("inf")

    def on_progress(p: Progress) -> None:
        nonlocal at, last_report
        timer.observe(p)
        if p.total_steps and p.phase in ("training", "evaluating"):
            at = max(at, start + share * min(p.step, p.total_steps) / p.total_steps)
        now = clock()
        if p.phase == "training" and p.total_steps:
            if now - last_report < min_interval and p.step < p.total_steps:
                return
            text = f"{label} step {p.step}/{p.total_steps}"
        elif p.phase == "evaluating" and p.total_steps:
            text = f"evaluating at step {p.step}/{p.total_steps}"
        else:
            text = f"{label}: {p.phase}" if label != "training" else p.phase
        last_report = now
        report(text, at, timer.eta(p.step, p.total_steps) if p.total_steps else None)
        if p.phase == "training":
            # Only after a step has finished (its evaluation included): the mirror copies rows
            # past the last step it stored, so syncing at "evaluating" would store step N's
            # train row and then never the eval row the evaluation appends for the same step.
            on_sync()

    return on_progress


def rate_eta(started: float, fraction: float, now: float) -> float | None:
    """Seconds left for work ``fraction`` done since ``started``, at the rate so far."""
    if fraction <= 0:
        return None
    return (now - started) * (1 - min(1.0, fraction)) / fraction

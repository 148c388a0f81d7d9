"""How many threads the engine's decode steps use, chosen by measuring, again and again.

On a CPU shared with other work, more threads can be much slower: torch's OpenMP regions end
in a barrier, and a thread that the OS has descheduled holds every other one there. Measured on
a 2-core VM at a load average of ~20, a (1, 576) x (576, 1536) product took 1.4 ms on one
thread and 25.6 ms on two; on the same machine idle, two threads are ~1.7x faster on a batch of
16. Neither count is right all the time, so the engine measures: every ``period`` steps it
runs ``trial`` steps at each candidate count and keeps the one with the least wall time per
row-step until the next probe.

``torch.set_num_threads`` is per calling thread under OpenMP, so this sets the engine thread's
count only (a tuning worker in the same process keeps its own).
"""

from __future__ import annotations

import logging
import statistics

import torch

logger = logging.getLogger(__name__)


class ThreadTuner:
    """Call :meth:`before_step` before each decode step and :meth:`after_step` after it."""

    def __init__(self, choices: list[int], *, period: int = 256, trial: int = 4):
        if not choices or any(c < 1 for c in choices):
            raise ValueError("thread counts must be at least 1")
        self.choices = sorted(set(choices))
        self.period, self.trial = period, trial
        self.current = self.choices[-1]
        self._probe: list[int] = []  # counts still to try, one per trial window
        self._samples: dict[int, list[float]] = {}
        self._steps = period  # probe first
        self._applied: int | None = None

    def before_step(self) -> None:
        if len(self.choices) > 1 and not self._probe and self._steps >= self.period:
            self._probe = [c for c in self.choices for _ in range(self.trial)]
            self._samples = {c: [] for c in self.choices}
            self._steps = 0
        want = self._probe[0] if self._probe else self.current
        if want != self._applied:
            torch.set_num_threads(want)
            self._applied = want

    def after_step(self, seconds: float, rows: int) -> None:
        self._steps += 1
        if not self._probe:
            return
        self._samples[self._probe.pop(0)].append(seconds / max(rows, 1))
        if not self._probe:
            best = min(self._samples, key=lambda c: statistics.median(self._samples[c]))
            if best != self.current:
                logger.info(
                    "decode threads %d -> %d (seconds per row-step: %s)",
                    self.current,
                    best,
                    {c: round(statistics.median(v), 5) for c, v in self._samples.items()},
                )
            self.current = best

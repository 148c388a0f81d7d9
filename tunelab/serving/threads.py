"""How many threads the engine's decode steps use, chosen by measuring, again and again.

On a CPU shared with other work, more threads can be much slower: torch's OpenMP regions end
in a barrier, and a thread that the OS has descheduled holds every other one there. Measured on
a 2-core VM at a load average of ~20, a (1, 576) x (576, 1536) product took 1.4 ms on one
thread and 25.6 ms on two; on the same machine idle, two threads are ~1.7x faster on a batch of
16. Neither count is right all the time, so the engine measures: every ``period`` steps it
runs ``trial`` steps at each candidate count and keeps the one with the least wall time per
row-step until the next probe, for each class of batch size on its own (:data:`ROW_CLASSES`).

Two rules keep probing cheap and the choice steady. A count whose first trial step is
:data:`ABANDON_FACTOR` x slower per row than the best seen in the probe is not tried further
(on a loaded machine a two-thread step can cost ~18x a one-thread one, so four of them every
period would cost more than the probe saves), which lets probes come often (``period`` 64 steps,
~3 s of a 16-row batch) and a server follow load that comes and goes. And a probe changes the
count only for a :data:`SWITCH_MARGIN` gain: at the serving bench's first probe, one thread
measured 6% faster than two within noise, and that choice then held a 16-row batch at 1 thread
(~270 tok/s instead of ~360) for the next 256 steps.

``torch.set_num_threads`` is per calling thread under OpenMP, so this sets the engine thread's
count only (a tuning worker in the same process keeps its own).
"""

from __future__ import annotations

import logging
import statistics

import torch

logger = logging.getLogger(__name__)


class one_thread:  # noqa: N801 - used as a function: ``with one_thread(): ...``
    """Run the block on one torch thread, then give the calling thread its count back.

    For work too small to share between threads inside a step that runs on several (a decode
    step's LoRA A products, sampling from the logits): on two threads such ops cost ~2x the
    CPU of one (the second spins in OpenMP's barrier), and far longer when another process
    holds a core. Setting the count costs ~0.1 us; a class, not a generator, because it wraps
    ~200 hook calls a decode step."""

    __slots__ = ("threads",)

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        if self.threads > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.threads > 1:
            torch.set_num_threads(self.threads)


SWITCH_MARGIN = 1.1
"""A probe moves to another count only if it measured at least this much faster per row-step."""

ABANDON_FACTOR = 2.0
"""A count whose first trial step is this much slower than the probe's best so far is dropped."""

ROW_CLASSES = (1, 2, 5)
"""Batch sizes that get their own thread count: 1 row, 2-4 rows, 5 rows and more. One row's
products are too small to share well between threads (on a loaded Intel Xeon with AMX a
single-stream step was much slower on two threads than on one) while 16 rows gain ~1.7x from two;
one count for all sizes let whichever size ran the probe decide for the others (the serving
bench's 9-row warm-up chose 2 threads for the single stream after it)."""


def row_class(rows: int) -> int:
    """The index in :data:`ROW_CLASSES` of the class a batch of ``rows`` falls in."""
    return max(i for i, low in enumerate(ROW_CLASSES) if rows >= low or i == 0)


class _Choice:
    """One batch-size class's count, its probe and its samples."""

    def __init__(self, choices: list[int], period: int):
        self.current = choices[-1]
        self.probe: list[int] = []  # counts still to try, one per trial window
        self.samples: dict[int, list[float]] = {}
        self.steps = period  # probe first


class ThreadTuner:
    """Call :meth:`before_step` before each decode step and :meth:`after_step` after it, with
    the step's batch rows; each class of batch size (:data:`ROW_CLASSES`) is measured and
    chosen on its own."""

    def __init__(self, choices: list[int], *, period: int = 64, trial: int = 4):
        if not choices or any(c < 1 for c in choices):
            raise ValueError("thread counts must be at least 1")
        self.choices = sorted(set(choices))
        self.period, self.trial = period, trial
        self._classes = [_Choice(self.choices, period) for _ in ROW_CLASSES]
        self._applied: int | None = None

    def current_for(self, rows: int) -> int:
        """The count chosen for batches of ``rows`` (outside a probe)."""
        return self._classes[row_class(rows)].current

    def before_step(self, rows: int) -> None:
        c = self._classes[row_class(rows)]
        if len(self.choices) > 1 and not c.probe and c.steps >= self.period:
            c.probe = [n for n in self.choices for _ in range(self.trial)]
            c.samples = {n: [] for n in self.choices}
            c.steps = 0
        want = c.probe[0] if c.probe else c.current
        if want != self._applied:
            torch.set_num_threads(want)
            self._applied = want

    def after_step(self, seconds: float, rows: int) -> None:
        c = self._classes[row_class(rows)]
        c.steps += 1
        if not c.probe:
            return
        count, per_row = c.probe.pop(0), seconds / max(rows, 1)
        others = [min(v) for n, v in c.samples.items() if v and n != count]
        first = not c.samples[count]
        c.samples[count].append(per_row)
        if first and others and per_row > ABANDON_FACTOR * min(others):
            c.probe = [n for n in c.probe if n != count]  # clearly slower: no more steps at it
        if not c.probe:
            medians = {n: statistics.median(v) for n, v in c.samples.items() if v}
            best = min(medians, key=medians.__getitem__)
            if best != c.current and medians[best] * SWITCH_MARGIN <= medians.get(
                c.current, float("inf")
            ):
                logger.info(
                    "decode threads for %s rows: %d -> %d (seconds per row-step: %s)",
                    describe_class(row_class(rows)),
                    c.current,
                    best,
                    {n: round(m, 5) for n, m in medians.items()},
                )
                c.current = best


def describe_class(index: int) -> str:
    low = ROW_CLASSES[index]
    if index + 1 == len(ROW_CLASSES):
        return f"{low}+"
    high = ROW_CLASSES[index + 1] - 1
    return str(low) if high == low else f"{low}-{high}"

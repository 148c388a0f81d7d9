"""Progress events from a training loop. Library code reports them through a callback; the CLI
draws a progress bar, a job worker stores them, a test can collect them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    phase: str
    """``loading``, ``validating``, ``training``, ``evaluating``, ``saving``, ``done``."""
    step: int = 0
    total_steps: int = 0
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    message: str = ""


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default callback: report nothing."""

"""Pipelines: the ordered steps a tuning job runs, one definition per method.

A method plugs in by calling :func:`register_pipeline` with its steps; the worker and store
never name a method. Each step is a function of a :class:`StepContext` returning its outputs
(artifact references ``{"uri", "sha256"}`` and small results), which are stored on the step and
handed to later steps. A step that already SUCCEEDED in an earlier attempt is not run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.db import Database
from tunelab.db.schema import TuningJob
from tunelab.registry.artifacts import ArtifactStore


class StopRequested(Exception):
    """Raised inside a step when the worker must stop (cancel, pause, SIGTERM, lost lease)."""


@dataclass
class StepContext:
    db: Database
    store: ArtifactStore
    job: TuningJob
    workdir: Path
    """Local working folder of this job (checkpoints, metrics), named by the job id."""
    outputs: dict[str, dict[str, Any]]
    """Outputs of the steps that already ran, by step name."""
    report: Callable[[str, float, float | None], None]
    """report(step_text, progress 0..1 over the whole job, eta_seconds)."""
    should_stop: Callable[[], bool]
    on_metrics: Callable[[Path], None] = field(default=lambda _path: None)
    """Called with the metrics.jsonl path as training advances, to mirror rows into the store."""

    def check_stop(self) -> None:
        if self.should_stop():
            raise StopRequested


Step = Callable[[StepContext], dict[str, Any]]


@dataclass(frozen=True)
class PipelineDef:
    method: str
    steps: tuple[tuple[str, Step], ...]
    weights: dict[str, float]
    """Share of the job's progress bar each step takes."""

    @property
    def step_names(self) -> list[str]:
        return [name for name, _ in self.steps]


PIPELINES: dict[str, PipelineDef] = {}


def register_pipeline(
    method: str, steps: list[tuple[str, Step]], weights: dict[str, float]
) -> None:
    PIPELINES[method] = PipelineDef(method, tuple(steps), weights)


def pipeline_for(method: str) -> PipelineDef:
    # Each method's module registers itself on import (imports are cached: this is cheap).
    import tunelab.jobs.dpo_pipeline  # noqa: F401  (registers itself)
    import tunelab.jobs.embedding_pipeline  # noqa: F401  (registers itself)
    import tunelab.jobs.rft_pipeline  # noqa: F401  (registers itself)
    import tunelab.jobs.rlhf_pipeline  # noqa: F401  (registers itself)
    import tunelab.jobs.sft_pipeline  # noqa: F401  (registers itself)

    if method not in PIPELINES:
        raise ValueError(
            f"unknown tuning method {method!r} (known: {', '.join(sorted(PIPELINES))})"
        )
    return PIPELINES[method]

"""Pipelines: the ordered steps a tuning job runs, one definition per method.

Each method's pipeline module defines ``PIPELINE``, a :class:`PipelineDef`, and the method
table (tunelab/jobs/methods.py) names that module; the worker and store never name a method. Each step is a function of a :class:`StepContext` returning its outputs
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
from tunelab.training.launch import run_recipe


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
    run_recipe: Callable[..., Any] = run_recipe
    """Where a step's recipe trains: local processes (tunelab.training.launch), or a Ray Train
    run on a cluster (tunelab.jobs.ray_executor); the worker's executor decides."""

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
    summary: Callable[[dict[str, dict[str, Any]]], list[str]] | None = None
    """What a finished job measured, in a few lines of text, from its steps' outputs (the CLI
    shows them after an in-process run); None: nothing beyond the tuned model's name."""

    @property
    def step_names(self) -> list[str]:
        return [name for name, _ in self.steps]

"""``sft.train(...)`` and the job object it returns, as in ``vertexai.tuning.sft``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.sdk.client import client

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


class SupervisedTuningJob:
    def __init__(self, resource: dict[str, Any]) -> None:
        self._resource = resource

    @property
    def resource_name(self) -> str:
        return self._resource["id"]

    name = resource_name

    @property
    def state(self) -> str:
        return self._resource["state"]

    @property
    def has_ended(self) -> bool:
        return self.state in TERMINAL

    @property
    def has_succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    @property
    def error(self) -> dict[str, Any] | None:
        return self._resource.get("error")

    @property
    def tuned_model_name(self) -> str | None:
        r = self._resource
        return (
            f"{r['tuned_model_name']}@{r['tuned_model_version']}"
            if r.get("tuned_model_version")
            else None
        )

    @property
    def tuned_model_endpoint_name(self) -> str | None:
        return self._resource.get("endpoint")

    @property
    def progress(self) -> float:
        return self._resource.get("progress", 0.0)

    def refresh(self) -> SupervisedTuningJob:
        self._resource = client().request("GET", f"/v1/tuningJobs/{self.resource_name}")
        return self

    def cancel(self) -> None:
        self._resource = client().request("POST", f"/v1/tuningJobs/{self.resource_name}:cancel")

    def __repr__(self) -> str:
        return f"SupervisedTuningJob({self.resource_name}, state={self.state})"


def upload_dataset(path: str | Path) -> str:
    """Upload a JSONL file (or pass through a dataset id) and return the dataset id."""
    if isinstance(path, str) and path.startswith("ds-") and not Path(path).exists():
        return path
    with open(path, "rb") as fh:
        return client().request(
            "POST", "/v1/datasets", files={"file": (Path(path).name, fh, "application/jsonl")}
        )["id"]


def train(
    *,
    source_model: str,
    train_dataset: str | Path,
    validation_dataset: str | Path | None = None,
    tuned_model_display_name: str,
    epochs: int | None = None,
    train_steps: int | None = None,
    learning_rate_multiplier: float | None = None,
    adapter_size: int | None = None,
    workers: int | None = None,
    accelerator: str | None = None,
    **config: Any,
) -> SupervisedTuningJob:
    """Start supervised tuning (Vertex ``sft.train``); returns at once with the job.

    ``workers``: training processes sharing each batch (the config's ``processes``; the
    adapter is the same, only the speed differs); ``accelerator``: ``"cpu"``, ``"cuda"`` or
    ``"auto"``. Other config fields go as keywords (``nodes=``, ``devices=``...)."""
    named = {
        "epochs": epochs,
        "train_steps": train_steps,
        "learning_rate_multiplier": learning_rate_multiplier,
        "adapter_size": adapter_size,
        **compute(workers, accelerator),
    }
    body = {
        "method": "sft",
        "tuned_model_display_name": tuned_model_display_name,
        "train_dataset": upload_dataset(train_dataset),
        "validation_dataset": upload_dataset(validation_dataset) if validation_dataset else None,
        "config": {
            "base_model": source_model,
            **{k: v for k, v in named.items() if v is not None},
            **config,
        },
    }
    return SupervisedTuningJob(client().request("POST", "/v1/tuningJobs", json=body))


def compute(workers: int | None, accelerator: str | None) -> dict[str, Any]:
    """The job spec's fields for the SDK's ``workers`` and ``accelerator`` (the CLI's
    ``--workers``/``--processes`` and ``--accelerator``), the ones given."""
    fields = {"processes": workers, "accelerator": accelerator}
    return {k: v for k, v in fields.items() if v is not None}


TuningJob = SupervisedTuningJob
"""The job object is the same for every method (state, refresh, tuned model, cancel)."""


def submit(
    method: str,
    tuned_model_display_name: str,
    datasets: dict[str, str | Path | None],
    config: dict[str, Any],
) -> TuningJob:
    """Upload each dataset given (or pass its id through) and create the job; the calls of
    every method (``sft.train``, ``tune_model_rlhf``, ``tune_model_dpo``, ``tune_model``) end here.
    Parameters left as None are the config's defaults."""
    body = {
        "method": method,
        "tuned_model_display_name": tuned_model_display_name,
        "datasets": {role: upload_dataset(d) for role, d in datasets.items() if d is not None},
        "config": {k: v for k, v in config.items() if v is not None},
    }
    return TuningJob(client().request("POST", "/v1/tuningJobs", json=body))

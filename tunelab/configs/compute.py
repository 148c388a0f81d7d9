"""Where a job computes: the ``accelerator`` and ``devices`` fields every method's config shares.

    tunelab tune sft --train train.jsonl --name router --accelerator cuda --devices 0,1

``devices`` follows PyTorch Lightning's spelling: ``"2"`` is a count (the first two CUDA
devices), ``"0,1"`` names indices, and a single index is written with a trailing comma
(``"1,"``). A single-process job runs on the first device of the list; the others are there for
runs that spread over several (data-parallel training).

Only the syntax is checked here (the SDK imports configs without torch); whether the machine has
what is asked is checked at submit by :func:`tunelab.models.device.check_compute`, so a request
for CUDA on a machine without it fails there, naming the field.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

Accelerator = Literal["auto", "cpu", "cuda"]

_DEVICES = re.compile(r"^\s*(\d{1,3})\s*$|^\s*\d{1,3}\s*(,\s*\d{1,3}\s*)*,?\s*$")


def parse_devices(devices: str) -> int | tuple[int, ...]:
    """``"2"`` -> 2 (a count); ``"0,1"`` -> (0, 1); ``"1,"`` -> (1,) (indices).

    Raises ValueError saying what is wrong with the spelling."""
    if not _DEVICES.match(devices):
        raise ValueError(
            f"devices {devices!r} is neither a count (e.g. 2) nor a list of device indices "
            "(e.g. 0,1; a single index as 1,)"
        )
    if "," not in devices:
        count = int(devices)
        if count < 1:
            raise ValueError("devices: a count must be at least 1")
        return count
    indices = tuple(int(part) for part in devices.split(",") if part.strip())
    if len(set(indices)) != len(indices):
        raise ValueError(f"devices {devices!r} names a device twice")
    return indices


class AcceleratorUnavailable(ValueError):
    """The machine lacks what a job's ``accelerator``/``devices`` ask for. ``field`` names the
    config field to change. (Here, not beside the torch code that raises it, so that the job
    worker can classify it without importing torch.)"""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ComputeFields(BaseModel):
    """Mixed into every method's config: the accelerator and devices a job runs on."""

    accelerator: Accelerator = Field(
        "auto",
        description="Where the job computes: cuda (an NVIDIA GPU), cpu, or auto (CUDA where "
        "the machine has it, else the CPU).",
    )
    devices: str | None = Field(
        None,
        max_length=64,
        description="CUDA devices: a count (2: the first two) or indices (0,1; one index as "
        "1,). Default: the first. Not with accelerator cpu.",
    )

    @field_validator("devices")
    @classmethod
    def _devices_spelling(cls, value: str | None) -> str | None:
        if value is not None:
            parse_devices(value)
        return value

    @model_validator(mode="after")
    def _devices_need_cuda(self):
        if self.devices is not None and self.accelerator == "cpu":
            raise ValueError("devices names CUDA devices; it cannot be given with accelerator cpu")
        return self

    def compute_fields(self) -> dict[str, str | None]:
        """The two fields, for a derived config (the RLHF job's reward-model stage)."""
        return {"accelerator": self.accelerator, "devices": self.devices}

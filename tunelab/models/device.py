"""Which torch device a job's ``accelerator`` and ``devices`` (tunelab.configs.compute) mean on
this machine, and moving batches there.

Everything device-specific goes through here and PyTorch's device-agnostic calls
(``module.to(device)``, ``tensor.to(device)``, ``torch.*(..., device=...)``), so training,
evaluation and serving run the same code on a CPU and on CUDA. The only question asked of CUDA is
:func:`cuda_device_count`, the hook tests replace to play a machine with GPUs.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from tunelab.configs.compute import AcceleratorUnavailable, parse_devices

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["AcceleratorUnavailable", "Placement", "resolve_placement", "to_device"]


def cuda_device_count() -> int:
    """CUDA devices this process can use (0 on a CPU-only build or machine)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Placement:
    """Where a job runs: ``kind`` ``cpu`` or ``cuda``, and the CUDA device indices it may use
    (empty on the CPU)."""

    kind: str
    indices: tuple[int, ...] = ()

    @property
    def device(self) -> torch.device:
        """The device of a single-process run: the first of ``indices``."""
        return torch.device("cuda", self.indices[0]) if self.kind == "cuda" else torch.device("cpu")

    def describe(self) -> str:
        """``cpu`` or ``cuda:0,1``: what a job's usage records."""
        return self.kind if self.kind == "cpu" else "cuda:" + ",".join(map(str, self.indices))


def resolve_placement(accelerator: str = "auto", devices: str | None = None) -> Placement:
    """The placement ``accelerator``/``devices`` mean here; ``auto`` takes CUDA when there is
    a device. Raises :class:`AcceleratorUnavailable` naming the field when the machine cannot
    give what is asked."""
    if accelerator == "cpu":
        return Placement("cpu")
    available = cuda_device_count()
    if available == 0:
        if accelerator == "cuda":
            raise AcceleratorUnavailable("accelerator", f"accelerator 'cuda': {_why_no_cuda()}")
        if devices is not None:
            raise AcceleratorUnavailable(
                "devices", f"devices {devices!r} names CUDA devices: {_why_no_cuda()}"
            )
        return Placement("cpu")
    wanted = parse_devices(devices) if devices is not None else 1
    if isinstance(wanted, int):
        if wanted > available:
            raise AcceleratorUnavailable(
                "devices",
                f"devices {devices!r} asks for {wanted} CUDA devices; this machine has {available}",
            )
        return Placement("cuda", tuple(range(wanted)))
    missing = [i for i in wanted if i >= available]
    if missing:
        raise AcceleratorUnavailable(
            "devices",
            f"devices {devices!r}: no CUDA device {missing[0]} on this machine "
            f"(it has {available}: indices 0-{available - 1})",
        )
    return Placement("cuda", wanted)


def inference_dtype(device: torch.device) -> torch.dtype:
    """The weights' format for serving on ``device``: bf16 on a CUDA device that has it (half
    the memory, tensor-core matmuls); fp32 elsewhere (a CPU's bf16 speed varies from 7x to a
    fraction of fp32: tunelab.training.precision)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_compute(config: Any) -> None:
    """Refuse, at submit, a config whose ``accelerator``/``devices`` this machine cannot give.

    A config without the fields (a method that runs no model) passes."""
    accelerator = getattr(config, "accelerator", "auto")
    devices = getattr(config, "devices", None)
    resolve_placement(accelerator, devices)


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        build = f"this PyTorch build ({torch.__version__}) has no CUDA support"
    else:
        build = "no CUDA device is visible to this process (check CUDA_VISIBLE_DEVICES/drivers)"
    return f"{build}; use accelerator auto or cpu"


def to_device(batch: T, device: torch.device) -> T:
    """``batch`` with every tensor on ``device``: a tensor, or a dataclass (Batch, PairBatch)
    whose tensor fields move and whose other fields stay. On the batch's own device: itself."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)  # type: ignore[return-value]
    moved = {
        f.name: getattr(batch, f.name).to(device, non_blocking=True)
        for f in dataclasses.fields(batch)  # type: ignore[arg-type]
        if torch.is_tensor(getattr(batch, f.name)) and getattr(batch, f.name).device != device
    }
    return dataclasses.replace(batch, **moved) if moved else batch  # type: ignore[type-var]

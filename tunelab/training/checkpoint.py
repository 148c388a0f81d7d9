"""Training checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint is a folder ``checkpoints/step-00000120`` holding, in safetensors (never pickle):
the trainable (adapter) weights, the optimizer's moment estimates, and the RNG state; plus a
JSON file with the loop's counters. It is written with :func:`atomic_dir`, so a folder that
exists is complete; a crash or a full disk mid-write leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunelab.training.atomic import atomic_dir

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


@dataclass
class LoopState:
    """The training loop's counters, saved with every checkpoint."""

    step: int = 0
    """Optimizer steps completed."""
    tokens_seen: int = 0
    train_seconds: float = 0.0
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: LoopState,
    keep: int = 2,
) -> Path:
    target = folder / f"step-{state.step:08d}"
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), tmp / WEIGHTS)
        save_file(optimizer_tensors(optimizer), tmp / OPTIMIZER)
        rng = {"torch_cpu": torch.get_rng_state()}
        save_file(rng, tmp / "rng.safetensors")
        (tmp / STATE).write_text(json.dumps(state.__dict__, indent=2))
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def load_latest(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> LoopState | None:
    """Restore the newest readable checkpoint; fall back to older ones if it is damaged."""
    for ckpt in reversed(list_checkpoints(folder)):
        try:
            state = LoopState(**json.loads((ckpt / STATE).read_text()))
            weights = load_file(ckpt / WEIGHTS)
            opt = load_file(ckpt / OPTIMIZER)
            rng = load_file(ckpt / "rng.safetensors")
        except Exception as exc:  # a damaged checkpoint must not stop the run from resuming
            logger.warning("checkpoint %s is unreadable (%s); trying an older one", ckpt.name, exc)
            continue
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        set_optimizer_tensors(optimizer, opt)
        torch.set_rng_state(rng["torch_cpu"])
        logger.info("resuming from %s (step %d)", ckpt.name, state.step)
        return state
    return None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    # Flatten AdamW's per-parameter state ({index: {"step", "exp_avg", "exp_avg_sq"}}) into a
    # name -> tensor mapping safetensors can hold.
    out: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"{index}.{key}"] = tensor.detach().clone().contiguous()
    return out


def set_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    sd["state"] = state
    optimizer.load_state_dict(sd)

"""Kept checkpoints: adapter bundles of chosen training steps, kept after the run as models.

A resume checkpoint (tunelab.training.checkpoint) holds optimizer state and goes when the run
ends. A *kept* checkpoint is what a user may call, evaluate, serve and promote: a small adapter
bundle ``kept/step-00000040`` (PEFT safetensors weights, adapter config, tokenizer,
``tuning_config.json``, ``checkpoint.json`` with the step's metrics, and ``manifest.json`` with
every file's sha256), so it passes :func:`tunelab.bundle.verify_adapter_bundle` like any
adapter.

Candidates are written at every resume checkpoint, every evaluation and the last step. Kept are
the last ``keep_last`` candidates plus the one with the lowest validation loss (Vertex and OpenAI
both keep "the last few and the best"); the others are removed as soon as they drop out, so the
disk holds at most ``keep_last + 2`` of them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.bundle import MANIFEST, file_hashes
from tunelab.training.atomic import atomic_dir, recover_dir, write_json

logger = logging.getLogger(__name__)

KEPT = "kept"
"""The run folder's subfolder holding kept checkpoints."""
STEP_DIR = re.compile(r"^step-(\d{8})$")
INFO = "checkpoint.json"

METRIC_KEYS = ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy")
"""The metrics every listing shows first (others a method logs at that step are kept too)."""


def step_dir(root: Path, step: int) -> Path:
    return root / KEPT / f"step-{step:08d}"


def list_kept(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete kept checkpoints under the run folder ``root``, by step."""
    folder = root / KEPT
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_info(folder: Path) -> dict[str, Any]:
    return json.loads((folder / INFO).read_text())


def step_metrics(rows: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """The metrics logged at ``step`` (its training row and its evaluation row), merged; only
    numbers, so the listing never carries a method's free text."""
    merged: dict[str, Any] = {}
    for row in rows:
        if row.get("step") == step:
            merged.update(
                {
                    k: v
                    for k, v in row.items()
                    if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
                }
            )
    return merged


def write_kept(
    root: Path,
    *,
    step: int,
    epoch: float,
    metrics: dict[str, Any],
    model: Any,
    tokenizer: Any,
    tuning_config: dict[str, Any],
    manifest: dict[str, Any],
    adapters: list[str] | None = None,
) -> Path:
    """Write the adapter of ``model`` (``adapters``: which ones, default all) at ``step`` as a
    bundle, atomically (a rerun of the same step after a resume replaces it with the same
    weights)."""
    folder = step_dir(root, step)
    info = {"step": step, "epoch": round(epoch, 4), "metrics": metrics}
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, selected_adapters=adapters)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "tuning_config.json", tuning_config)
        write_json(tmp / INFO, info)
        write_json(
            tmp / MANIFEST,
            {
                "kind": "lora_adapter",
                "tunelab_version": __version__,
                **manifest,
                "steps": step,
                "checkpoint": info,
                "files": file_hashes(tmp),
            },
        )
    return folder


def chosen(candidates: list[tuple[int, dict[str, Any]]], keep_last: int) -> set[int]:
    """The steps kept among ``candidates`` ((step, metrics)): the last ``keep_last`` and the one
    with the lowest ``eval_loss`` (the earliest on a tie, as early stopping counts it)."""
    if keep_last <= 0:
        return set()
    steps = sorted(s for s, _ in candidates)
    keep = set(steps[-keep_last:])
    evaluated = [(m["eval_loss"], s) for s, m in candidates if m.get("eval_loss") is not None]
    if evaluated:
        keep.add(min(evaluated)[1])
    return keep


def prune(root: Path, keep_last: int) -> list[int]:
    """Remove the kept checkpoints no longer chosen; the steps still kept."""
    found = list_kept(root)
    infos = [(s, read_info(p).get("metrics", {})) for s, p in found]
    keep = chosen(infos, keep_last)
    for step, folder in found:
        if step not in keep:
            shutil.rmtree(folder, ignore_errors=True)
    return sorted(keep)


def drop_after(root: Path, step: int) -> None:
    """On resume: the checkpoints past the resumed step are written again as the run gets there,
    so the kept set reads as that of one uninterrupted run; a write a crash interrupted (its
    temporary folder, or the folder it was replacing) is cleared or put back."""
    folder = root / KEPT
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.endswith(".old"):
                recover_dir(p.with_name(p.name[: -len(".old")]))
    for s, kept in list_kept(root):
        if s > step:
            shutil.rmtree(kept, ignore_errors=True)

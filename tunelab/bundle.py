"""The adapter bundle: the folder a recipe writes, the registry stores and the server loads.

    adapter_model.safetensors   LoRA weights (PEFT layout)
    adapter_config.json         PEFT adapter config
    tokenizer.json, ...         the tokenizer and chat template the examples were rendered with
    tuning_config.json          the typed config of the job (method, base model, parameters)
    data_stats.json             validation reports of the datasets (token statistics)
    metrics.jsonl               per-step metrics
    loss_curve.png              train/eval loss against step
    manifest.json               what made it: base model, dataset sha256s, files with sha256

``manifest.json`` is written last; a folder without it is not a bundle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
BUNDLE_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "tuning_config.json",
    "data_stats.json",
    "metrics.jsonl",
    "loss_curve.png",
    MANIFEST,
)


class NotABundleError(FileNotFoundError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise NotABundleError(f"{folder} is not an adapter bundle: it has no {MANIFEST}")
    return json.loads(path.read_text())


def read_tuning_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "tuning_config.json").read_text())

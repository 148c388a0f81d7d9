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

Every adapter load (CLI predict, serving, worker, evaluation, RL and DPO stages, embeddings)
first calls :func:`verify_adapter_bundle`: weights in safetensors only (unpickling a ``.bin``
can run any code), and every file the manifest lists with the sha256 it lists, so a corrupted
or swapped file is refused before anything reads it.
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


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Weight formats that torch reads by unpickling; never loaded."""
REQUIRED_LISTED = ("adapter_config.json",)
"""Files a bundle's manifest must list (besides its safetensors weights), so they are checked."""


class NotABundleError(FileNotFoundError):
    pass


class BundleIntegrityError(ValueError):
    """An adapter folder holds pickle weights, or a file differs from its manifest's sha256."""


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


def verify_adapter_bundle(folder: Path, label: str | None = None) -> dict[str, Any]:
    """Refuse an adapter folder that is unsafe or not exactly what was written; the manifest.

    Refused, each with a message naming the file: a folder with pickle weights
    (``adapter_model.bin``, ``*.pt``, ``*.pkl``...; only safetensors are accepted), a folder
    without ``manifest.json`` or whose manifest lists no files, a listed file that is missing or
    whose sha256 differs, and safetensors weights or ``adapter_config.json`` not listed.
    ``label`` names the adapter in messages instead of its folder (servers show no paths).
    """
    folder = Path(folder)
    where = label or f"adapter folder {folder}"
    if not folder.is_dir():
        raise NotABundleError(f"{where} does not exist")
    pickles = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise BundleIntegrityError(
            f"{where} holds pickle weights ({', '.join(pickles)}): only "
            "safetensors are accepted, since unpickling can run arbitrary code"
        )
    weights = sorted(p.name for p in folder.glob("*.safetensors"))
    if not weights:
        raise BundleIntegrityError(
            f"{where} has no *.safetensors weights: only safetensors are accepted"
        )
    if not (folder / MANIFEST).is_file():
        raise NotABundleError(f"{where} is not an adapter bundle: it has no {MANIFEST}")
    manifest = read_manifest(folder)
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise BundleIntegrityError(
            f"the {MANIFEST} of {where} lists no files with their sha256, so its files cannot "
            "be checked"
        )
    for name in [*weights, *REQUIRED_LISTED]:
        if (folder / name).exists() and name not in listed:
            raise BundleIntegrityError(
                f"{name} in {where} is not listed in its {MANIFEST}: refusing an unlisted file"
            )
    for name, expected in sorted(listed.items()):
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise BundleIntegrityError(f"{name}, listed in the {MANIFEST} of {where}, is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleIntegrityError(
                f"{name} in {where} does not match its {MANIFEST}: sha256 {actual[:16]}… "
                f"instead of {str(expected)[:16]}… (the file is corrupted or was replaced)"
            )
    return manifest

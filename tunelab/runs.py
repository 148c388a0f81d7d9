"""Run folders and the name -> adapter index used by the CLI's one-command path.

A run's folder is named by an id the system derives from what defines the run (tuned model
name, config, and the sha256 of each dataset): running the same command again finds the same
folder and resumes it; changing anything starts a new run. User strings never become paths.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunelab.bundle import MANIFEST
from tunelab.config import get_settings
from tunelab.training.atomic import write_json


def run_id(name: str, config: dict[str, Any], dataset_sha256s: list[str | None]) -> str:
    key = json.dumps({"name": name, "config": config, "data": dataset_sha256s}, sort_keys=True)
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def run_dir(rid: str) -> Path:
    return get_settings().runs / rid


def is_complete(rdir: Path) -> bool:
    return (rdir / "adapter" / MANIFEST).is_file()


def _index_path() -> Path:
    return get_settings().home / "tuned_models.json"


def read_index() -> dict[str, dict[str, Any]]:
    path = _index_path()
    return json.loads(path.read_text()) if path.is_file() else {}


def record_tuned_model(name: str, rid: str) -> None:
    index = read_index()
    index[name] = {"run_id": rid}
    write_json(_index_path(), index)


def adapter_for_name(name: str) -> Path | None:
    entry = read_index().get(name)
    if entry is None:
        return None
    path = run_dir(entry["run_id"]) / "adapter"
    return path if (path / MANIFEST).is_file() else None

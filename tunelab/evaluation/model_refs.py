"""What a user may name as a model to evaluate, and loading it.

A reference is, in this order: the name of a tuned model (the name -> run index of
:mod:`tunelab.runs`, to become the registry), an adapter bundle folder (it has ``manifest.json``),
or a base model (catalog name, local folder or hub id, see :func:`tunelab.models.resolve_model`).
``tunelab predict`` resolves ``--model`` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab import runs
from tunelab.bundle import MANIFEST, read_manifest
from tunelab.models import load_tokenizer, resolve_model
from tunelab.serving.generation import LoadedModel, load_for_inference


@dataclass(frozen=True)
class ModelRef:
    ref: str
    """As the user wrote it."""
    kind: Literal["tuned", "adapter", "base"]
    adapter_dir: Path | None
    base_path: Path | None
    """The base model's folder, for a base reference (an adapter names its own base)."""

    @property
    def tokenizer_dir(self) -> Path:
        """Where the tokenizer and chat template the model is prompted with live."""
        return self.adapter_dir if self.adapter_dir is not None else self.base_path  # type: ignore[return-value]

    def describe(self) -> str:
        return f"{self.ref} ({self.kind}: {self.adapter_dir or self.base_path})"


def resolve_model_ref(ref: str) -> ModelRef:
    """Find what ``ref`` names, without loading weights.

    Raises :class:`tunelab.models.ModelNotFoundError` when it names nothing, and
    :class:`tunelab.bundle.NotABundleError` for an incomplete adapter folder.
    """
    adapter = runs.adapter_for_name(ref)
    if adapter is not None:
        return ModelRef(ref, "tuned", adapter, None)
    if (Path(ref) / MANIFEST).is_file():
        read_manifest(Path(ref))
        return ModelRef(ref, "adapter", Path(ref), None)
    return ModelRef(ref, "base", None, resolve_model(ref).path)


def load_model_ref(ref: str | ModelRef) -> LoadedModel:
    """Load a tuned model, adapter folder or base model for generation (in eval mode)."""
    resolved = ref if isinstance(ref, ModelRef) else resolve_model_ref(ref)
    if resolved.adapter_dir is not None:
        return load_for_inference(adapter_dir=resolved.adapter_dir)
    loaded = load_for_inference(base_ref=str(resolved.base_path))  # resolved once, not again
    loaded.name = resolved.ref
    return loaded


def load_ref_tokenizer(ref: ModelRef):
    return load_tokenizer(ref.tokenizer_dir)

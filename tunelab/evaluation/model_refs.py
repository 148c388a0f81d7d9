"""What a user may name as a model to evaluate, and loading it.

A reference is resolved as ``tunelab predict`` resolves ``--model``
(:func:`tunelab.services.resolve_model_ref`), in this order: a registered tuned model (``name``
or ``name@version``), an adapter bundle folder (it has ``manifest.json``), or a base model
(catalog name, local folder or hub id, see :func:`tunelab.models.resolve_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab.bundle import read_manifest
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
    def path(self) -> Path:
        """The adapter bundle or base model folder: where the tokenizer and template live."""
        return self.adapter_dir if self.adapter_dir is not None else self.base_path  # type: ignore[return-value]


def resolve_model_ref(ref: str) -> ModelRef:
    """Find what ``ref`` names, without loading weights.

    Raises :class:`tunelab.models.ModelNotFoundError` when it names nothing, and
    :class:`tunelab.bundle.NotABundleError` for an incomplete adapter folder.
    """
    from tunelab.services import open_services
    from tunelab.services import resolve_model_ref as resolve_in_registry

    base_ref, adapter = resolve_in_registry(open_services(), ref)
    if adapter is not None:
        read_manifest(adapter)  # refuse a folder that is not a complete bundle
        is_folder = Path(ref).expanduser().resolve() == Path(adapter).resolve()
        return ModelRef(ref, "adapter" if is_folder else "tuned", Path(adapter), None)
    return ModelRef(ref, "base", None, resolve_model(base_ref or ref).path)


def load_model_ref(ref: str | ModelRef) -> LoadedModel:
    """Load a tuned model, adapter folder or base model for generation (in eval mode)."""
    resolved = ref if isinstance(ref, ModelRef) else resolve_model_ref(ref)
    if resolved.adapter_dir is not None:
        loaded = load_for_inference(adapter_dir=resolved.adapter_dir)
    else:
        loaded = load_for_inference(base_ref=str(resolved.base_path))  # resolved once, not again
    loaded.name = resolved.ref
    return loaded


def load_ref_tokenizer(ref: ModelRef):
    """The tokenizer and chat template the model is prompted with, without its weights."""
    return load_tokenizer(ref.path)

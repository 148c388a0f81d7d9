"""What a user may name as a model to evaluate, and loading it.

A reference is resolved as ``tunelab predict`` resolves ``--model``, by the one resolver
(:func:`tunelab.registry.resolve.resolve`, with the operator's ``allow_folder``): an endpoint
id, a servable base model, a registered tuned model (``name`` or ``name@version``), an adapter
bundle folder (it has ``manifest.json``), or a base model folder or hub id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tunelab.bundle import verify_adapter_bundle
from tunelab.models import load_tokenizer
from tunelab.serving.generation import LoadedModel, load_for_inference

if TYPE_CHECKING:
    import torch


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

    Raises :class:`tunelab.models.ModelNotFoundError` or
    :class:`tunelab.registry.resolve.ModelNotFound` when it names nothing, and
    :class:`tunelab.bundle.BundleIntegrityError` for an adapter that fails its check (pickle
    weights, a file that differs from the manifest).
    """
    from tunelab.registry.resolve import base_folder, resolve
    from tunelab.services import open_services

    target = resolve(open_services(), ref, allow_folder=True)
    if target.adapter_dir is not None:
        verify_adapter_bundle(target.adapter_dir)
        kind = "adapter" if target.kind == "folder" else "tuned"
        return ModelRef(ref, kind, Path(target.adapter_dir), None)
    return ModelRef(ref, "base", None, base_folder(target))


def load_model_ref(ref: str | ModelRef, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a tuned model, adapter folder or base model for generation (in eval mode), on
    ``device``."""
    resolved = ref if isinstance(ref, ModelRef) else resolve_model_ref(ref)
    if resolved.adapter_dir is not None:
        loaded = load_for_inference(adapter_dir=resolved.adapter_dir, device=device)
    else:  # resolved once, not again
        loaded = load_for_inference(base_ref=str(resolved.base_path), device=device)
    loaded.name = resolved.ref
    return loaded


def load_ref_tokenizer(ref: ModelRef):
    """The tokenizer and chat template the model is prompted with, without its weights."""
    return load_tokenizer(ref.path)

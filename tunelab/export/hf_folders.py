"""The two Hugging Face folder exports: the adapter as PEFT (and vLLM) load it, and the base
model with the adapter merged in, as ``AutoModelForCausalLM`` loads it. Neither needs TuneLab
to be read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tunelab.export.source import ExportSource, merge_lora, read_lora
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.serving.adapters import CONFIG, WEIGHTS

KNOWN_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Catalog bases are converted from GGUF files; elsewhere they are known by their hub id."""


def base_model_id(source: ExportSource) -> str:
    """What ``base_model_name_or_path`` should say for a consumer outside TuneLab: the hub id
    of a catalog base, else the reference it was tuned from (a hub id or a folder)."""
    return KNOWN_HUB_IDS.get(source.base.ref, source.base.ref)


def write_peft(source: ExportSource, out: Path) -> list[Path]:
    """``adapter_config.json`` + ``adapter_model.safetensors`` + tokenizer and chat template."""
    config = source.adapter_config()
    config["base_model_name_or_path"] = base_model_id(source)
    config["inference_mode"] = True
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(source.bundle / WEIGHTS, out / WEIGHTS)
    load_tokenizer(source.bundle).save_pretrained(out)
    return sorted(out.iterdir())


def merged_model(source: ExportSource, dtype: torch.dtype = torch.float32):
    """The base model (fp32) with the adapter merged into its weights, and the tokenizer."""
    model = load_causal_lm(source.base.path, dtype=dtype)
    merge_lora(model, read_lora(source.bundle, model, source.label))
    model.config.use_cache = True  # a model for inference now
    return model, load_tokenizer(source.bundle)


def write_merged(source: ExportSource, out: Path) -> list[Path]:
    """A transformers safetensors folder (config, weights, generation config, tokenizer)."""
    model, tokenizer = merged_model(source)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return sorted(out.iterdir())

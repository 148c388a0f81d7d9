"""Loading a resolved base model and its tokenizer, safely.

``use_safetensors=True`` makes transformers refuse pickle checkpoints and ``trust_remote_code``
stays off, so loading a model never runs code that came with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(
            f"the tokenizer in {path} has no chat template; TuneLab formats every example with "
            "the base model's chat template, so an instruct/chat model is required"
        )
    return tokenizer


def load_causal_lm(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=False
    )
    model.config.use_cache = False
    return model

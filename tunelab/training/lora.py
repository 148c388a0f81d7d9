"""LoRA adapters for training: which layers get one, a fresh adapter, a tuned one to continue
from, and the optimizer that trains them.

Every recipe builds its trainable model here, so the adapter's shape (targets, no dropout) is
decided in one place and the fused training forward (tunelab.training.fused_lora) recognises
every model a recipe makes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.bundle import read_tuning_config, verify_adapter_bundle
from tunelab.models import load_causal_lm, resolve_model

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Every linear layer of a Llama-style decoder block (QLoRA's finding: all layers beat q/v only)."""

ENCODER_LORA_TARGETS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"
"""Every linear layer of each BERT-style encoder block (attention q/k/v/output, both MLP
layers); the pooler, unused by mean pooling, is left out."""


def with_lora(model, rank: int, alpha: int, targets=LORA_TARGETS, task_type: str | None = None):
    """``model`` with a fresh LoRA adapter (named ``default``) on ``targets``, B at zero."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        # No dropout: it would cost a mask per layer per step and make runs depend on RNG
        # state; on 100-1000 examples for a few epochs the adapter's low rank is regulariser
        # enough, and early stopping on the validation set guards the rest.
        lora_dropout=0.0,
        target_modules=targets,
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def lora_model(base_path: Path, rank: int, alpha: int):
    """The causal base model with a fresh LoRA adapter on every linear layer."""
    return with_lora(load_causal_lm(base_path), rank, alpha, task_type="CAUSAL_LM")


def adapter_model(adapter_dir: Path, base_path: Path):
    """The base model with a tuned adapter bundle loaded as the trainable starting point.

    Raises ValueError when the bundle was tuned on another base model."""
    from peft import PeftModel

    verify_adapter_bundle(adapter_dir)  # safetensors only, every file as its manifest lists
    adapter_base = read_tuning_config(adapter_dir)["base_model"]
    if resolve_model(adapter_base).path != base_path:
        raise ValueError(
            f"init_adapter was tuned on {adapter_base!r}, not on this run's base model; "
            f"give --base {adapter_base}"
        )
    return PeftModel.from_pretrained(load_causal_lm(base_path), adapter_dir, is_trainable=True)


def adamw(params: list[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
    """AdamW without weight decay; the fused kernel (one pass over all parameters instead of a
    dozen small ops per tensor) wherever torch has one for the parameters' device."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused)
    # The fused kernel writes the parameters without bumping their version counters, which
    # every other in-place write does; the fused LoRA forward keeps compute-dtype copies of
    # the LoRA weights and knows they changed by those counters (fused_lora._FusedGroup).
    optimizer.register_step_post_hook(lambda *_: torch.autograd.graph.increment_version(params))
    return optimizer

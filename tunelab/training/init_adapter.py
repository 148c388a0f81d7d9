"""Starting a LoRA run from a tuned adapter (continued tuning, ``tune sft --base NAME@V``).

The new run's LoRA layers (fresh from PEFT: A random, B zero) take the parent adapter's factors
so that the model at step 0 computes exactly what the parent computes:

    A_new[:r_p]    = A_p                      # (r_p, in)
    B_new[:, :r_p] = B_p * s_p / s_new        # (out, r_p): the scales differ when alpha or
    B_new[:, r_p:] = 0                        #   rank do; the product s B A stays the parent's

Rows of A beyond the parent's rank keep their random init with B zero there, exactly like a
fresh LoRA: they add nothing at step 0 and start learning at once. Layers the parent does not
adapt stay fresh. The factors are read by the serving engine's checked reader (safetensors only,
shapes checked against the base model), so the run starts from the adapter that was served.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@torch.no_grad()
def init_adapter_from(model, bundle: Path) -> int:
    """Load the adapter bundle ``bundle`` into the LoRA layers of PEFT model ``model`` (its
    "default" adapter); returns the number of layers set. ValueError when it cannot fit."""
    from tunelab.export.source import read_lora

    base = model.get_base_model()
    parent = read_lora(bundle, base)  # verifies the bundle: safetensors only, as its manifest lists
    layers = dict(base.named_modules())
    for name, f in parent.items():
        layer = layers.get(name)
        if layer is None or not hasattr(layer, "lora_A") or "default" not in layer.lora_A:
            raise ValueError(
                f"the adapter {bundle} adapts {name}, which this run's LoRA does not target"
            )
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (r, in), (out, r)
        rank, parent_rank = A.shape[0], f.A.shape[0]
        if parent_rank > rank:
            raise ValueError(
                f"the adapter {bundle} has rank {parent_rank} at {name}; continue with "
                f"adapter_size {parent_rank} or more (this run has {rank})"
            )
        scale = float(layer.scaling["default"])
        A[:parent_rank].copy_(f.A.to(A.dtype))
        B.zero_()
        B[:, :parent_rank].copy_((f.B * (f.scale / scale)).to(B.dtype))
    logger.info("initialised %d LoRA layers from %s", len(parent), bundle)
    return len(parent)

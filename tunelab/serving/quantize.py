"""Serving precisions of the base model: fp32, bf16, and int8 weight-only.

A decode step reads every weight of the model once per step, so at small batches its time is
the time to stream the weights from memory: halving their bytes halves it. Measured on an
Intel Xeon with AMX, one thread, a (1, 576) x (576, 1536) product: fp32 161 us, bf16 190 us,
int8 weights with bf16 activations (``aten._weight_int8pack_mm``) 83 us; at 16 rows bf16 (AMX)
is the fastest, 190 us against 538 us in fp32 and 500 us for int8. So:

- ``fp32``  the reference; what training and ``tunelab predict`` compute in;
- ``bf16``  weights and activations in bf16: fastest for batches where the CPU has AMX;
- ``int8``  the base model's linear layers (attention, MLP, and an int8 copy of the output
            head) hold int8 weights with one fp32-derived scale per output channel (symmetric,
            round to nearest; the "weight-only int8" of gpt-fast and torchao), activations in
            bf16: fastest for one or few streams. The embedding stays in bf16.

LoRA adapters still apply per row: an :class:`Int8Linear` is an ``nn.Linear`` to the adapter
cache (same features, a ``weight`` stand-in that carries the dtype), and the LoRA term is
added to its output by the same hook.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

logger = logging.getLogger(__name__)

ServingPrecision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")


class Int8Linear(torch.nn.Linear):
    """``y = x W^T + b`` with W stored as int8 (out, in) times a per-output-channel scale."""

    def __init__(self, linear: torch.nn.Linear, act_dtype: torch.dtype = torch.bfloat16):
        torch.nn.Module.__init__(self)  # not Linear's: it would allocate a full weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()  # (out, in)
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (out,)
        self.register_buffer(
            "qweight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("scales", scales.to(act_dtype))
        # The adapter cache reads the dtype and features from ``weight``; no values needed.
        self.weight = torch.nn.Parameter(torch.empty((0,), dtype=act_dtype), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(act_dtype), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype).contiguous()  # (N, in)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


def apply_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Convert a loaded fp32 causal LM in place to ``precision``; returns it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return model
    model.to(torch.bfloat16)
    if precision == "bf16":
        return model
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear  # the head too; its tied embedding stays bf16
    ]
    modules = dict(model.named_modules())
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, Int8Linear(module))
    logger.info("int8 weight-only: %d linear layers quantized", len(targets))
    return model

"""bf16 linear layers whose weights are held in oneDNN's blocked layout, packed once.

Why: ``F.linear`` on a bf16 CPU weight hands oneDNN a plain (out, in) matrix, and oneDNN
reorders the whole weight into its blocked layout on every call, a pass over the weight that
costs about as much as the product itself. A decode step multiplies one or a few rows by every
weight of the model once, so that reorder is most of its linear layers' time. Packing each
weight once (``torch.ops.mkldnn._reorder_linear_weight``) and multiplying with
``torch.ops.mkldnn._linear_pointwise`` runs the same oneDNN kernel on the same layout, so the
outputs are bit-identical to ``F.linear`` (tests/serving/test_prepacked.py), without the pass.

Measured on an Intel Xeon with AMX, one thread: a 1536 x 576 product at 16 rows 0.154 ->
0.081 ms, SmolLM2-135M's output head 4.8 -> 2.6 ms; a whole single-stream decode step of
SmolLM2-135M in bf16 57.5 -> 44 ms of thread CPU (bench/profile_serving_step.py).

Cost: the packed copy is a second copy of each weight (2 bytes a parameter: ~+260 MB of RSS for
SmolLM2-135M); ``weight`` stays the plain tensor (tied to the embeddings for an output head,
merged into by the RL rollouts' sampling policy), which products of many rows (prefills) and
inputs other than bf16 on the CPU are multiplied with.

Used by the serving engine's bf16 and int8+bf16 base model (``quantize.py``) and the RL
rollouts' merged bf16 policy (``tunelab.training.sampling_policy``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

PACKED_MAX_ROWS = 64
"""Products of more rows (prefills) multiply the plain weight: outputs are bit-identical to
``F.linear`` only where oneDNN picks the same kernel for both layouts, measured for 1 to 95
rows on every SmolLM2-135M shape; at 96 rows a 576 -> 192 product differed in the last bit
(and so did a prefill's greedy text). Decode steps are at most ``max_batch_size`` rows."""

PACK_ROWS = 16
"""The batch-size hint of the packed layout (the rows a decode step multiplies; any count
works, and 1 and 16 measured the same for a single stream)."""


def available() -> bool:
    """Whether this torch build can pack and multiply bf16 weights with oneDNN."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in), bf16 on the CPU, in oneDNN's layout: an opaque tensor that only
    :func:`packed_linear` reads. RuntimeError where oneDNN cannot pack it."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` for ``W`` packed by :func:`pack`; ``x`` (..., in) bf16 on the CPU."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PrepackedLinear(torch.nn.Linear):
    """A bf16 CPU ``nn.Linear`` over the same parameters, its weight also packed (see the
    module doc). Call :meth:`repack` after writing ``weight`` in place."""

    def __init__(self, linear: torch.nn.Linear):
        torch.nn.Module.__init__(self)  # not Linear's: it would allocate a fresh weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same parameters
        self.packed = pack(self.weight)
        self.lora_packed: torch.Tensor | None = None
        """``[W | B_cat]`` packed by the adapter cache, for inputs ``[x | h]`` (adapters.py)."""

    @torch.no_grad()
    def repack(self) -> None:
        """Pack ``weight`` again (after it was written in place)."""
        self.packed = pack(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:  # [x | h]: LoRA folded in by the adapter cache
            return packed_linear(x, self.lora_packed, self.bias)
        if use_packed(x, self.packed, self.in_features):
            return packed_linear(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_packed(x: torch.Tensor, packed: torch.Tensor, in_features: int) -> bool:
    """Whether ``x`` (..., in) is multiplied packed: bf16 on the CPU, as packed, and at most
    :data:`PACKED_MAX_ROWS` rows (a decode step; a prefill's product is plain)."""
    return (
        x.dtype == packed.dtype
        and x.device.type == "cpu"
        and x.numel() <= PACKED_MAX_ROWS * in_features
    )


def prepack_linears(model: torch.nn.Module) -> dict[int, PrepackedLinear]:
    """Swap every plain bf16 CPU ``nn.Linear`` of ``model`` for a :class:`PrepackedLinear` over
    the same parameters, where this torch build has oneDNN. Returns them by ``id`` of their
    weight; empty if nothing was packed (the plain layers then stay)."""
    if not available():
        return {}
    swaps = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear
        and module.weight.dtype == torch.bfloat16
        and module.weight.device.type == "cpu"
    ]
    packed: dict[int, PrepackedLinear] = {}
    try:
        for name, module in swaps:
            layer = PrepackedLinear(module)
            owner_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner_name), attr, layer)
            packed[id(module.weight)] = layer
    except RuntimeError as e:  # a oneDNN build without bf16 packing: keep the plain layers
        logger.info("bf16 linear layers not prepacked (%s)", e)
        for name, module in swaps:
            owner_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner_name), attr, module)
        return {}
    return packed

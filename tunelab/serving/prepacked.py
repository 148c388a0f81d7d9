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

Cost: where the plain weight must stay (the RL rollouts' sampling policy merges into it; an
output head tied to the embeddings), the packed copy is a second copy of it (2 bytes a
parameter). The serving engine, which never writes its base weights, keeps only the packed
copy of the others (``keep_plain=False``).

Used by the serving engine's bf16 and int8+bf16 base model (``quantize.py``) and the RL
rollouts' merged bf16 policy (``tunelab.training.sampling_policy``).
"""

from __future__ import annotations

import ctypes
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

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
    module doc). Call :meth:`repack` after writing ``weight`` in place.

    ``keep_plain=False``: ``weight`` becomes an empty bf16 stand-in (what the serving adapter
    cache reads: dtype and device), so the weight is held once, packed; inputs are then always
    multiplied packed (cast to bf16 first), and :meth:`repack` is refused."""

    def __init__(self, linear: torch.nn.Linear, *, keep_plain: bool = True):
        torch.nn.Module.__init__(self)  # not Linear's: it would allocate a fresh weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same parameters
        self.packed = pack(self.weight)
        self.plain = keep_plain
        if not keep_plain:
            self.weight = torch.nn.Parameter(self.weight.new_empty((0,)), requires_grad=False)

    @torch.no_grad()
    def repack(self) -> None:
        """Pack ``weight`` again (after it was written in place)."""
        if not self.plain:
            raise RuntimeError("this layer holds its weight packed only: nothing to repack")
        self.packed = pack(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.plain:
            if x.dtype != self.packed.dtype:
                x = x.to(self.packed.dtype)
            return packed_linear(x, self.packed, self.bias)
        if x.dtype != self.packed.dtype or x.device.type != "cpu":  # not what was packed for
            return F.linear(x, self.weight, self.bias)
        return packed_linear(x, self.packed, self.bias)


def prepack_linears(
    model: torch.nn.Module, *, keep_plain: bool = True
) -> dict[int, PrepackedLinear]:
    """Swap every plain bf16 CPU ``nn.Linear`` of ``model`` for a :class:`PrepackedLinear` over
    the same parameters, where this torch build has oneDNN. Returns them by ``id`` of their
    weight; empty if nothing was packed (the plain layers then stay).

    ``keep_plain=False`` (a model only served, never written to): layers hold their weight
    packed only, except a weight shared with another module (an output head tied to the
    embeddings), which the other module still reads."""
    if not available():
        return {}
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
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
            shared = uses.get(id(module.weight), 0) > 1
            layer = PrepackedLinear(module, keep_plain=keep_plain or shared)
            owner_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner_name), attr, layer)
            packed[id(module.weight)] = layer
    except RuntimeError as e:  # a oneDNN build without bf16 packing: keep the plain layers
        logger.info("bf16 linear layers not prepacked (%s)", e)
        for name, module in swaps:
            owner_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner_name), attr, module)
        return {}
    if not keep_plain:
        swaps = module = None  # the last references to the plain weights
        _return_freed_memory()
    return packed


def _return_freed_memory() -> None:
    """Hand the plain weights' freed pages back to the OS. glibc keeps freed blocks of this
    size in its heap, and the packed copies, allocated before each plain weight is freed, do
    not reuse them: measured for SmolLM2-135M in bf16, RSS 917 MB after packing, 715 MB after
    this (655 MB unpacked). Without glibc (macOS, musl): nothing to do."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

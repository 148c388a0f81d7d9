"""Serving precisions of the base model: fp32, bf16, int8 weight-only, int8+bf16, int4+bf16,
and auto.

A decode step reads every weight of the model once per step, so at small batches its time is
the time to stream the weights from memory: halving their bytes halves it. Measured on an
Intel Xeon with AMX, one thread, a (1, 576) x (576, 1536) product: fp32 161 us, bf16 190 us,
int8 weights with bf16 activations (``aten._weight_int8pack_mm``) 83 us; at 16 rows bf16 (AMX)
is the fastest, 190 us against 538 us in fp32 and 500 us for int8. So:

- ``fp32``       the reference; what training and ``tunelab predict`` compute in;
- ``bf16``       weights and activations in bf16: fastest for batches where the CPU has AMX;
                 on a CPU the linear weights are also held prepacked for oneDNN
                 (``prepacked.py``: 2 more bytes a weight; the per-call reorder of each weight
                 was ~25% of a single-stream decode step's thread CPU);
- ``int8``       the base model's linear layers (attention, MLP, and an int8 copy of the output
                 head) hold int8 weights with one fp32-derived scale per output channel
                 (symmetric, round to nearest; the "weight-only int8" of gpt-fast and torchao),
                 activations in bf16: fastest for one or few streams. Products of many rows (a
                 prefill) dequantize the weight to bf16 and run a bf16 matmul instead: the int8
                 kernel has no AMX path and took 7.4 s where bf16 took 1.0 s to prefill 16
                 prompts. The embedding stays in bf16;
- ``int8+bf16``  ``int8`` that also keeps the dequantized weights in bf16 (3 bytes per weight
                 instead of 1; fp32 holds 4): steps of few rows stream the int8 weights, steps
                 of many rows (a batch of 16, a prefill) use bf16 matmuls without dequantizing
                 each time. Both paths compute with the same weight values (the int8 ones).
                 On a CPU the bf16 copy is also held prepacked (2 more bytes a weight), as in
                 ``bf16``;
- ``int4+bf16``  ``int8+bf16`` with the attention and MLP layers' few-row weights in 4 bits
                 (:class:`Int4Linear`, group-wise scales and zeros like llama.cpp's Q4_1); the
                 output head stays int8. Half the bytes of a single-stream step's products;
                 quality: bench/bench_serving.py's accuracy guard (a tuned adapter answered as
                 in fp32 on all 80 examples) and ``INT4_GROUP``'s measure;
- ``auto``       measures this CPU once and picks one of these (``precision_choice.py``).

LoRA adapters still apply per row: an :class:`Int8Linear` is an ``nn.Linear`` to the adapter
cache (same features, a ``weight`` that carries the dtype), and the LoRA term is added to its
output by the same hook.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F

from tunelab.serving.prepacked import (
    available,
    pack,
    packed_linear,
    prepack_linears,
    use_packed,
)

logger = logging.getLogger(__name__)

ServingPrecision = Literal["fp32", "bf16", "int8", "int8+bf16", "int4+bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8", "int8+bf16", "int4+bf16")
CHOICES: tuple[str, ...] = (*PRECISIONS, "auto")
"""What ``tunelab serve --precision`` and ``Engine(precision=...)`` accept."""

DEQUANTIZE_ROWS = 64
"""``int8``: products of at least this many rows dequantize the weight to bf16 first. The
dequantization is a pass over the weight, paid back only when the int8 kernel's cost, which
grows with the rows, is several times a bf16 matmul's: a prefill, not a decode step."""

DENSE_ROWS = 4
"""``int8+bf16``: products of at least this many rows use the bf16 copy. Measured (see the
module doc) int8 wins at 1 row (83 vs 190 us) and loses at 16 (500 vs 190 us), growing ~28 us
per row: even near 4 rows. ``auto`` measures it on the machine instead
(``precision_choice.py``)."""


class Int8Linear(torch.nn.Linear):
    """``y = x W^T + b`` with W stored as int8 (out, in) times a per-output-channel scale.

    Products of at least ``dense_rows`` rows run in bf16 on the dequantized weight: the one
    kept in ``weight`` (``keep_dense``) or made for the call.
    """

    def __init__(
        self,
        linear: torch.nn.Linear,
        act_dtype: torch.dtype = torch.bfloat16,
        *,
        keep_dense: bool = False,
        dense_rows: int | None = None,
    ):
        torch.nn.Module.__init__(self)  # not Linear's: it would allocate a full weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()  # (out, in)
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (out,)
        self.register_buffer(
            "qweight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("scales", scales.to(act_dtype))
        # The adapter cache reads the dtype and features from ``weight``: the dequantized bf16
        # weight when it is kept, else an empty stand-in.
        dense = self.dequantized() if keep_dense else torch.empty((0,), dtype=act_dtype)
        self.weight = torch.nn.Parameter(dense, requires_grad=False)
        self.dense_rows = dense_rows or (DENSE_ROWS if keep_dense else DEQUANTIZE_ROWS)
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(act_dtype), False)
        self.packed: torch.Tensor | None = None
        """The kept bf16 weight also in oneDNN's layout (:meth:`prepack`)."""
        self.lora_packed: torch.Tensor | None = None
        """``[W | B_cat]`` packed by the adapter cache, for inputs ``[x | h]`` (adapters.py)."""

    @torch.no_grad()
    def prepack(self) -> bool:
        """Also hold the kept bf16 weight packed for oneDNN: the bf16 products of a decode
        step's rows then skip the per-call reorder of the weight (``prepacked.py``), with
        bit-identical outputs; prefills multiply the plain one. Returns whether it packed (a
        kept weight on a CPU whose torch build has oneDNN)."""
        if not self.weight.numel() or self.weight.device.type != "cpu" or not available():
            return False
        try:
            self.packed = pack(self.weight)
        except RuntimeError as e:  # a oneDNN build without bf16 packing: plain products
            logger.info("int8+bf16 weight not prepacked (%s)", e)
            return False
        return True

    def dequantized(self) -> torch.Tensor:
        """The weight as the int8 kernel sees it, in the activations' dtype: (out, in)."""
        return self.qweight * self.scales[:, None]  # int8 x bf16 promotes to bf16, one pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Called ~210 times per decode step: no op that is not needed (each costs ~1-2 us of
        # dispatch; a single-stream step's int8 product is ~20-150 us).
        if x.shape[-1] != self.in_features:  # [x | h]: LoRA folded in by the adapter cache
            return packed_linear(x, self.lora_packed, self.bias)
        if x.dtype != self.scales.dtype:
            x = x.to(self.scales.dtype)
        x2 = x.reshape(-1, self.in_features)  # (N, in): a view of a contiguous x
        if x2.shape[0] >= self.dense_rows:
            if self.packed is not None and use_packed(x, self.packed, self.in_features):
                return packed_linear(x, self.packed, self.bias)  # (..., out)
            w = self.weight if self.weight.numel() else self.dequantized()
            return F.linear(x, w, self.bias)
        y = self.few_rows(x2 if x2.is_contiguous() else x2.contiguous())
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def few_rows(self, x2: torch.Tensor) -> torch.Tensor:
        """The weight-only kernel's product, ``x2`` (N, in) contiguous -> (N, out), no bias."""
        return _INT8_MM(x2, self.qweight, self.scales)


_INT8_MM = torch.ops.aten._weight_int8pack_mm.default
"""The int8 weight-only kernel (bf16 activations, per-channel scales), looked up once."""

INT4_GROUP = 32
"""Input columns per int4 scale and zero (llama.cpp's Q4_1 blocks are 32 too). Measured on
SmolLM2-135M (40 chat texts of examples/ticket-routing-chat, teacher-forced, against fp32):
groups of 32 kept the top-1 next token 98.7% of the time (per-channel int8: 97.7%), groups of
64 only 72%."""

INT4_BLOCK = 64
"""The int4 kernel's packed weight holds output channels in blocks of 64: sibling layers are
fused (:class:`Int8Product`) only when each one's channels fill whole blocks."""


class Int4Linear(Int8Linear):
    """``int4+bf16``: W as 4-bit integers with a bf16 scale and zero per :data:`INT4_GROUP`
    input columns (asymmetric, round to nearest: ``w = (q - 8) * scale + zero``), multiplied by
    ``aten._weight_int4pack_mm_for_cpu`` for few rows, and kept dequantized in bf16 (and
    prepacked) for many, as ``int8+bf16`` does.

    Why: a single-stream decode step streams every weight from memory once, and there the int8
    kernel is bound by bytes: measured on an Intel Xeon with AMX, one thread, 150 distinct
    1536 x 576 weights in turn, int8 139 us a product, int4 64 us; one weight hot, both 58 us.
    """

    def __init__(
        self,
        linear: torch.nn.Linear,
        act_dtype: torch.dtype = torch.bfloat16,
        *,
        dense_rows: int | None = None,
    ):
        if not self.fits(linear):
            raise ValueError(
                f"an int4 layer needs input features in multiples of {INT4_GROUP}, not "
                f"{linear.in_features}"
            )
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = n_in, n_out = linear.in_features, linear.out_features
        w = linear.weight.detach().float().view(n_out, n_in // INT4_GROUP, INT4_GROUP)
        low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = torch.round((w - low) / scale).clamp(0, 15)  # (out, groups, G)
        # The kernel reads bf16 scales and zeros: the kept weight is dequantized with them.
        scale, zero = scale.to(act_dtype), (low + 8 * scale).to(act_dtype)
        dense = ((q - 8) * scale.float() + zero.float()).view(n_out, n_in).to(act_dtype)
        self.register_buffer("qweight", _PACK_INT4(q.view(n_out, n_in).to(torch.int32), 1))
        scales = torch.stack([scale.view(n_out, -1), zero.view(n_out, -1)], dim=-1)
        self.register_buffer("scales", scales.transpose(0, 1).contiguous())  # (groups, out, 2)
        self.weight = torch.nn.Parameter(dense, requires_grad=False)
        self.dense_rows = dense_rows or DENSE_ROWS
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(act_dtype), False)
        self.packed = None
        self.lora_packed = None

    @staticmethod
    def fits(linear: torch.nn.Linear) -> bool:
        return linear.in_features % INT4_GROUP == 0

    def dequantized(self) -> torch.Tensor:
        return self.weight

    def few_rows(self, x2: torch.Tensor) -> torch.Tensor:
        return _INT4_MM(x2, self.qweight, INT4_GROUP, self.scales)


_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default
_PACK_INT4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu.default


class Int8Product:
    """One weight-only product for sibling :class:`Int8Linear` (or :class:`Int4Linear`)
    layers called on the same input (q/k/v, gate/up), or for one layer: ``x [W_1 | W_2 |
    ...]^T`` in one kernel call.

    Why: a single-stream decode step of SmolLM2-135M is ~1,300 small ATen ops beside its 210
    int8 products, each op and each module call a few us of dispatch; one product for q/k/v
    and one for gate/up are 3 calls fewer a block, and calling the kernel here skips the
    module call and :meth:`Int8Linear.forward`'s checks. Each output channel is the same dot
    product of the same weight row and scale whichever other rows share the call, so the
    outputs equal the separate layers' (tests/serving/test_fused_decode.py).

    Memory does not grow: the members' ``qweight`` (and int8 ``scales``) become views into the
    fused buffers (int4 scales and zeros, 1/4 of the int4 weight's bytes, are copied: the
    kernel reads them channel-minor). The members stay whole layers: a step where a row has a
    LoRA adapter calls them one by one, through the adapter cache's hooks
    (``fast_decode.LeanDecoder``).
    """

    def __init__(self, members: list[Int8Linear]):
        kind = type(members[0]) if members else None
        if kind not in (Int8Linear, Int4Linear) or any(type(m) is not kind for m in members):
            raise TypeError("Int8Product fuses Int8Linear or Int4Linear layers of one kind")
        first = members[0]
        if any(
            m.in_features != first.in_features or m.scales.dtype != first.scales.dtype
            for m in members
        ):
            raise ValueError("fused layers must share their input features and dtype")
        if len({m.bias is None for m in members}) > 1:
            raise ValueError("fused layers must all have a bias or none")
        self.int4 = kind is Int4Linear
        if self.int4 and len(members) > 1 and any(m.out_features % INT4_BLOCK for m in members):
            raise ValueError(f"fused int4 layers need outputs in blocks of {INT4_BLOCK}")
        self.in_features = first.in_features
        self.out_features = sum(m.out_features for m in members)
        self.dense_rows = min(m.dense_rows for m in members)
        """Steps of at least this many rows multiply through the members (their bf16 paths)."""
        if len(members) == 1:
            self.qweight, self.scales = first.qweight, first.scales
        else:
            self.qweight = torch.cat([m.qweight for m in members])  # (sum out, ...)
            self.scales = torch.cat([m.scales for m in members], dim=1 if self.int4 else 0)
            at = 0
            for m in members:  # the members read their rows of the fused buffers
                n = m.out_features
                m.qweight = self.qweight[at : at + n]
                if not self.int4:
                    m.scales = self.scales[at : at + n]
                at += n
        self.bias = None if first.bias is None else torch.cat([m.bias for m in members])

    @classmethod
    def of(cls, members: list[torch.nn.Module]) -> Int8Product | None:
        """The fused product of ``members``, or None when they are not all plain
        :class:`Int8Linear` (or all :class:`Int4Linear`) layers that can share one."""
        try:
            return cls(members)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, in) contiguous, in the scales' dtype -> (N, sum out)."""
        if self.int4:
            y = _INT4_MM(x, self.qweight, INT4_GROUP, self.scales)
        else:
            y = _INT8_MM(x, self.qweight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y


def apply_precision(
    model: torch.nn.Module,
    precision: str,
    *,
    dense_rows: int | None = None,
    prepack: bool = True,
) -> torch.nn.Module:
    """Convert a loaded fp32 causal LM in place to ``precision`` (one of :data:`PRECISIONS`;
    resolve ``auto`` with ``precision_choice.choose_precision`` first); returns it.

    ``prepack``: hold the bf16 weights of the linear layers (``bf16``; the kept copies of
    ``int8+bf16``) in oneDNN's layout where the model is on a CPU with oneDNN
    (``prepacked.py``): the same outputs without a reorder of every weight on every call. Pass
    False for a model that will move to a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return model
    model.to(torch.bfloat16)
    if precision == "bf16":
        if prepack:
            packed = prepack_linears(model)
            logger.info("bf16: %d linear layers prepacked", len(packed))
        return model
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear  # the head too; its tied embedding stays bf16
    ]
    modules = dict(model.named_modules())
    keep = precision in ("int8+bf16", "int4+bf16")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        if precision == "int4+bf16" and module is not head and Int4Linear.fits(module):
            layer = Int4Linear(module, dense_rows=dense_rows)
        else:  # int4 scores the output head's logits visibly worse (INT4_GROUP): int8
            layer = Int8Linear(module, keep_dense=keep, dense_rows=dense_rows)
        setattr(modules[parent_name] if parent_name else model, child, layer)
    packed = 0
    if keep and prepack:
        packed = sum(m.prepack() for m in model.modules() if isinstance(m, Int8Linear))
    logger.info(
        "%s weight-only: %d linear layers quantized, %d bf16 copies prepacked",
        precision,
        len(targets),
        packed,
    )
    return model

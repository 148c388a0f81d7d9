"""A faster training forward for LoRA on Llama-style decoders: same parameters, same maths.

PEFT wraps each of a block's seven linear layers on its own, so one block's step runs 56 matrix
multiplies (21 forward, 35 backward) and, for every layer, scales the LoRA output and adds it to
the base output as separate full-size elementwise passes (and again in the backward). On a CPU,
where a 135M model's matmuls are small, those passes and the many small matmuls cost a large
share of the step (bench/profile_sft_step.py times it against PEFT's). This module regroups the
work without changing what is learnt:

- q, k and v read the same input, as do gate and up: their frozen weights are stored as one
  matrix each, made in the compute dtype when first used (in the weights' own dtype the
  original weights become views into it, so no memory is added), and one larger matmul
  replaces two or three smaller ones, at better efficiency;
- their LoRA ``A`` matrices are stacked, so ``x @ A.T`` is one matmul for the group too;
- the LoRA term is added inside the base GEMM's output (``addmm_`` with ``beta=1``, scaling as
  ``alpha``), so no full-size scaling pass exists, forward or backward; in a bf16 run q|k|v,
  gate|up and o go further, one matmul over a widened contraction that adds no pass at all
  (:class:`_AugmentedLoraLinear`), from bf16 copies of the adapter rewritten only when it
  changes;
- the backward is written by hand (:class:`_LoraLinear`): 5 matmuls per group, the input
  gradient skipped where autograd does not need it (the first block's attention input);
- RMSNorm and the rotary embedding, a dozen small elementwise ops each in eager autograd, get a
  hand-written backward too (:class:`_RMSNorm`, :class:`_Rotary`), and q and k are rotated in
  one pass, straight from the fused q|k|v output.

Parameters stay where PEFT put them (``...q_proj.lora_A.default.weight``...), so checkpoints,
``save_pretrained`` and every loader are unchanged. Only ``forward`` of the attention, MLP and
norm modules is replaced. The fused forward computes whichever one plain LoRA adapter is active
(the RL stage scores with a reward adapter beside the policy's) or none while PEFT is asked to
skip them (``disable_adapter()``: the reference); PEFT's path still runs whenever a KV cache is
in use (generation) or an adapter is merged.
:func:`fuse_lora_for_training` returns False, changing nothing, for any model it does not
recognise (other architectures, dropout, biases on LoRA, missing targets).

Two training options ride on the same forward: bf16 mixed precision (``compute_dtype``; see
tunelab.training.precision), and attention over a packed batch whose shared prompt prefix is
computed once (``shared_prefix``, set by tunelab.training.prefix_sharing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


ATTENTION = ("q_proj", "k_proj", "v_proj")
MLP_IN = ("gate_proj", "up_proj")


class _LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s * [x A_1^T B_1^T | ... | x A_k^T B_k^T], for k LoRA'd layers sharing x.

    x: (N, in); W: (sum out_i, in) frozen; A_i: (r, in); B_i: (out_i, r).
    The B_i are laid out as one block-diagonal (sum out_i, k r) matrix so the k LoRA outputs are a
    single matmul; its zero blocks cost k*r/in of the base matmul (4% for q,k,v at r=8).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scaling, *lora):  # noqa: ANN001 - autograd signature
        k = len(lora) // 2
        a_list, b_list = lora[:k], lora[k:]
        # The LoRA matrices are fp32 parameters; in bf16 they compute from a bf16 copy (tiny),
        # as under autocast, and their gradients are returned in fp32 for the optimizer.
        a = (torch.cat(a_list) if k > 1 else a_list[0]).to(x.dtype)  # (k r, in)
        b = _block_diagonal(b_list).to(x.dtype)  # (sum out_i, k r)
        xa = x @ a.t()  # (N, k r)
        y = F.linear(x, weight, bias)  # (N, sum out_i)
        y.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(x, weight, a, b, xa)
        ctx.scaling = scaling
        ctx.outs = [t.shape[0] for t in b_list]
        ctx.rank = a_list[0].shape[0]
        return y

    @staticmethod
    def backward(ctx, grad_y):  # noqa: ANN001
        x, weight, a, b, xa = ctx.saved_tensors
        s, r = ctx.scaling, ctx.rank
        grad_xa = grad_y @ b  # (N, k r): block-diagonal b keeps each group's own B
        grad_xa.mul_(s)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ weight  # (N, in)
            grad_x.addmm_(grad_xa, a)
        grad_a = grad_xa.t() @ x  # (k r, in)
        grad_b_full = grad_y.t() @ xa  # (sum out_i, k r); only the diagonal blocks are used
        grad_b_full.mul_(s)
        grads_a, grads_b, row = [], [], 0
        for i, out in enumerate(ctx.outs):
            grads_a.append(grad_a[i * r : (i + 1) * r].float())
            grads_b.append(grad_b_full[row : row + out, i * r : (i + 1) * r].float())
            row += out
        return (grad_x, None, None, None, *grads_a, *grads_b)


class _AugmentedLoraLinear(torch.autograd.Function):
    """:class:`_LoraLinear` as one matmul over a widened contraction, for a compute dtype with a
    copy of its own (bf16):

        y = [x | x A^T | 0] [W | s B | 0]^T = x W^T + s x A^T B^T (+ b)

    ``w_aug`` (sum out_i, in + k r + pad) holds the frozen weight and, beside it, the active
    adapter's block-diagonal B scaled by s (:meth:`_FusedGroup.augmented`); ``a`` (k r, in) the
    stacked A, both in the compute dtype and refreshed only when the adapter's weights change.
    Adding the LoRA term after the base matmul costs a pass over the whole output: ~30% of
    gate|up's matmul at a 135M model's widths, ~4% of a reward-model step in all; here it costs
    the K r (+ pad, so the width stays a multiple of 32 for AMX) extra columns of one matmul.
    The backward reads the output gradient once for both ``g W`` and ``s g B`` (one matmul
    against ``w_aug``) where two matmuls each read it.
    """

    @staticmethod
    def forward(ctx, x, w_aug, a, bias, scaling, *lora):  # noqa: ANN001 - autograd signature
        width, kr = x.shape[1], a.shape[0]
        xa = x @ a.t()  # (N, k r)
        pad = w_aug.shape[1] - width - kr
        x_aug = torch.cat([x, xa, x.new_zeros(x.shape[0], pad)] if pad else [x, xa], 1)
        y = F.linear(x_aug, w_aug, bias)  # (N, sum out_i)
        ctx.save_for_backward(x_aug, w_aug, a)
        ctx.scaling, ctx.width = scaling, width
        k = len(lora) // 2
        ctx.outs = [t.shape[0] for t in lora[k:]]
        ctx.rank = lora[0].shape[0]
        return y

    @staticmethod
    def backward(ctx, grad_y):  # noqa: ANN001
        x_aug, w_aug, a = ctx.saved_tensors
        width, kr, r = ctx.width, a.shape[0], ctx.rank
        x, xa = x_aug[:, :width], x_aug[:, width : width + kr]
        grad_x = None
        if ctx.needs_input_grad[0]:
            both = grad_y @ w_aug  # (N, in + k r + pad): [g W | s g B | 0]
            grad_xa = both[:, width : width + kr]
            grad_x = both[:, :width].addmm_(grad_xa, a)  # (N, in)
        else:
            grad_xa = grad_y @ w_aug[:, width : width + kr]  # (N, k r), s g B
        grad_a = grad_xa.t() @ x  # (k r, in)
        grad_b_full = grad_y.t() @ xa  # (sum out_i, k r); only the diagonal blocks are used
        grad_b_full.mul_(ctx.scaling)
        grads_a, grads_b, row = [], [], 0
        for i, out in enumerate(ctx.outs):
            grads_a.append(grad_a[i * r : (i + 1) * r].float())
            grads_b.append(grad_b_full[row : row + out, i * r : (i + 1) * r].float())
            row += out
        return (grad_x, None, None, None, None, *grads_a, *grads_b)


class _RMSNorm(torch.autograd.Function):
    """y = w * x / sqrt(mean(x^2) + eps) over the last dim, w frozen, computed in x's dtype
    (fp32) and returned in ``out_dtype``: the norm's output only feeds the next matmuls, so in
    bf16 it is rounded once, here, while the residual stream it reads stays fp32.

    Backward, with g' = g * w and dot = sum(g' * x) over the row:
    dx = rstd * g' - x * rstd^3 * dot / C.

    Each pass over the (tokens, C) activations costs about as much as the next, so both
    directions take as few as the maths allows: forward, the rows' sums of squares and two
    products, the second writing the compute dtype directly; backward, one product with the
    weight (which also converts a bf16 gradient), the rows' dot products and one fused
    multiply-add. torch's ``_fused_rms_norm`` on the CPU is the composite (square, mean, rsqrt,
    two products), and a cast follows it. Alone, at (416, 576) on one thread, the old forward
    took ~1.3x and the old backward ~2.4x these; inside a bf16 reward-model step, where the
    activations come from memory rather than cache, the two save ~1% of the step. The rows'
    reductions are ``vector_norm`` (forward) and ``einsum`` (backward), each one pass without
    a temporary, where ``vecdot`` multiplied into a (tokens, C) temporary first: forward and
    backward together ~20% faster again (0.93 -> 0.75 ms at (384, 576), one thread).
    """

    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):  # noqa: ANN001
        width = x.shape[-1]
        # vector_norm reads x once; vecdot(x, x) multiplies into a temporary and sums it
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        rstd = norm.square_().div_(width).add_(eps).rsqrt_()
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        torch.mul(x * rstd, weight, out=y)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # noqa: ANN001
        x, weight, rstd = ctx.saved_tensors
        grad = torch.mul(grad_y, weight.to(x.dtype))  # g', in x's dtype (bf16 g is promoted)
        dot = torch.einsum("...c,...c->...", grad, x).unsqueeze_(-1)  # ~2x vecdot's speed
        coefficient = dot.mul_(rstd.pow(3)).div_(-x.shape[-1])
        return grad.mul_(rstd).addcmul_(x, coefficient), None, None, None


class _Rotary(torch.autograd.Function):
    """Rotary position embedding of x: (B, T, H, D) with cos, sin: (B, T, D) (Llama's layout:
    the rotation pairs element i with i + D/2), in three passes instead of eager's eight.

        y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2
        dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1
    """

    @staticmethod
    def forward(ctx, x, cos, sin):  # noqa: ANN001
        half = x.shape[-1] // 2
        c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (B, T, 1, D): one angle for all heads
        y = x * c
        y[..., :half].addcmul_(x[..., half:], s[..., :half], value=-1)
        y[..., half:].addcmul_(x[..., :half], s[..., half:])
        ctx.save_for_backward(cos, sin)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # noqa: ANN001
        cos, sin = ctx.saved_tensors
        half = grad_y.shape[-1] // 2
        c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
        grad_x = grad_y * c
        grad_x[..., :half].addcmul_(grad_y[..., half:], s[..., half:])
        grad_x[..., half:].addcmul_(grad_y[..., :half], s[..., :half], value=-1)
        return grad_x, None, None


class _SwiGLU(torch.autograd.Function):
    """h = silu(gate) * up from the fused gate|up output, saving that output and silu(gate)
    (eager autograd saves the same), with a backward that writes both halves' gradients into
    one buffer, ready for the gate|up matmul's backward, instead of computing them apart and
    concatenating them in one more pass. silu is the costliest elementwise op of a bf16 step
    (an exponential per element): computing it again in the backward to save memory cost 30
    of them per step at a 135M model, ~1.5% of its time, for ~1 MB a layer.
    """

    @staticmethod
    def forward(ctx, gate_up, half):  # noqa: ANN001
        gate, up = gate_up[..., :half], gate_up[..., half:]
        silu = F.silu(gate)
        ctx.save_for_backward(gate_up, silu)
        ctx.half = half
        return silu * up

    @staticmethod
    def backward(ctx, grad_h):  # noqa: ANN001
        gate_up, silu = ctx.saved_tensors
        half = ctx.half
        gate, up = gate_up[..., :half], gate_up[..., half:]
        grad = torch.empty_like(gate_up, memory_format=torch.contiguous_format)
        torch.ops.aten.silu_backward.grad_input(grad_h * up, gate, grad_input=grad[..., :half])
        torch.mul(grad_h, silu, out=grad[..., half:])
        return grad, None


class _GatherRows(torch.autograd.Function):
    """x[index] along the first dimension, rows repeated as often as the index names them; the
    backward adds each row's gradients back with one ``index_add_`` over a contiguous 2-D
    gradient. Autograd's own backward of ``index_select`` takes a slow elementwise scatter when
    the gradient is not contiguous, as it is after attention's transposes."""

    @staticmethod
    def forward(ctx, x, index):  # noqa: ANN001
        ctx.save_for_backward(index)
        ctx.shape = x.shape
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (index,) = ctx.saved_tensors
        rows = grad.reshape(len(index), -1)
        out = rows.new_zeros(ctx.shape[0], rows.shape[1]).index_add_(0, index, rows)
        return out.view(ctx.shape), None


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(0, index)`` with a fast backward (:class:`_GatherRows`)."""
    return _GatherRows.apply(x, index)


def _block_diagonal(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(blocks) == 1:
        return blocks[0]
    return torch.block_diag(*blocks)


class _FusedGroup:
    """k LoRA-wrapped ``nn.Linear`` layers that read the same input, computed as one."""

    def __init__(self, layers: Sequence[torch.nn.Module]):
        self.bases = [layer.base_layer for layer in layers]
        self.outs = [base.weight.shape[0] for base in self.bases]
        self.layers = list(layers)
        self.frozen: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor | None]] = {}
        """The frozen (sum out_i, in) weight and bias in each compute dtype in use, made when an
        input of that dtype first arrives: a bf16 run without evaluation never makes the fp32
        one (a copy of every frozen weight of the model, a third of a second at 135M)."""
        self.width = self.bases[0].weight.shape[1]
        self.widens = sum(self.outs) >= self.width
        """Whether a compute-dtype copy is widened for :class:`_AugmentedLoraLinear`: where the
        output is at least as wide as the input (q|k|v, gate|up, o). For down (1536 -> 576 at
        135M) the wider matmul and its wider input cost what the add saved."""
        self.wide: dict[torch.dtype, torch.Tensor] = {}
        """Per widened compute dtype, [W | s B | 0] (sum out_i, in + extra), extra a multiple
        of 32 minus ``in``'s remainder; ``frozen[dtype]``'s weight is a view of its first
        ``in`` columns (no second copy of the weight)."""
        self.lora: dict[torch.dtype, tuple[tuple, torch.Tensor, tuple]] = {}
        """Per widened dtype: (the adapter and its weights' versions the LoRA columns hold, the
        stacked A in that dtype, the B blocks' shapes)."""

    @property
    def dtype(self) -> torch.dtype:
        """The base layers' own dtype (what PEFT's forward computes in)."""
        return self.bases[0].weight.dtype

    def weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the group in ``dtype``; made once."""
        if dtype not in self.frozen:
            # Normal tensors whatever mode the first caller runs in: made under inference mode
            # (a rollout, an evaluation) they could not be saved for a later step's backward,
            # nor hold the base weights that become views into them.
            with torch.inference_mode(False), torch.no_grad():
                if self.widens and dtype != self.dtype:
                    ranks = [r for layer in self.layers for r in layer.r.values()]
                    weight = self._widen(dtype, max(ranks, default=0) * len(self.layers))
                else:
                    weight = self._stacked("weight", dtype)
                bias = self._stacked("bias", dtype)
            self.frozen[dtype] = (weight, bias)
        return self.frozen[dtype]

    def _widen(self, dtype: torch.dtype, lora_columns: int) -> torch.Tensor:
        """Make ``wide[dtype]`` with room for ``lora_columns`` LoRA columns; its weight view."""
        extra = lora_columns + -(self.width + lora_columns) % 32  # AMX takes 32 bf16 columns
        wide = torch.zeros(
            sum(self.outs), self.width + extra, dtype=dtype, device=self.bases[0].weight.device
        )
        old = self.wide.get(dtype)
        if old is not None:  # an adapter of a higher rank: the weight moves to a wider copy
            wide[:, : self.width] = old[:, : self.width]
        else:
            row = 0
            for base, out in zip(self.bases, self.outs, strict=True):
                wide[row : row + out, : self.width] = base.weight.detach()
                row += out
        self.wide[dtype] = wide
        self.lora.pop(dtype, None)
        return wide[:, : self.width]

    def augmented(
        self, name: str, dtype: torch.dtype, scaling: float, a: list, b: list
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(``wide[dtype]`` holding adapter ``name``'s s B, its stacked A) in ``dtype``, for
        :class:`_AugmentedLoraLinear`. Rewritten only when the adapter or its weights changed
        (their version counters: the optimizer made by tunelab.training.lora.adamw bumps them,
        as every in-place copy does): one copy per step, not casts in every forward."""
        key = (name, scaling, *((p.data_ptr(), p._version) for p in (*a, *b)))
        cached = self.lora.get(dtype)
        if cached is not None and cached[0] == key:
            return self.wide[dtype], cached[1]
        with torch.inference_mode(False), torch.no_grad():
            _, bias = self.weights(dtype)
            kr = sum(t.shape[0] for t in a)
            if self.wide[dtype].shape[1] - self.width < kr:
                self.frozen[dtype] = (self._widen(dtype, kr), bias)
                cached = None
            wide = self.wide[dtype]
            lora_columns = wide[:, self.width :]
            layout = tuple(t.shape for t in b)
            if cached is None or cached[2] != layout:  # else only the blocks are rewritten
                lora_columns.zero_()  # block-diagonal: each B on its own rows and columns
            row, col = 0, 0
            for b_i in b:
                out, r = b_i.shape
                torch.mul(b_i.detach(), scaling, out=lora_columns[row : row + out, col : col + r])
                row, col = row + out, col + r
            stacked_a = torch.cat([t.detach() for t in a]).to(dtype)  # (k r, in)
        self.lora[dtype] = (key, stacked_a, layout)
        return wide, stacked_a

    def _stacked(self, name: str, dtype: torch.dtype) -> torch.Tensor | None:
        parts = [getattr(base, name) for base in self.bases]
        if parts[0] is None:
            return None
        parts = [part.detach() for part in parts]
        if len(parts) == 1:
            return parts[0].to(dtype)  # in the layer's own dtype: its own tensor, no copy
        stacked = parts[0].new_empty((sum(self.outs), *parts[0].shape[1:]), dtype=dtype)
        row = 0
        for base, part, out in zip(self.bases, parts, self.outs, strict=True):
            stacked[row : row + out].copy_(part)  # converts to dtype in the same pass
            if dtype == part.dtype:  # the original becomes a view: no second copy of it
                getattr(base, name).data = stacked[row : row + out]
            row += out
        return stacked

    def adapter(self) -> str | None:
        """The one adapter the layers compute (``default``, or another one switched on with
        ``set_adapter``, as the RL stage's reward adapter), or None when PEFT is asked to skip
        them (``with model.disable_adapter():``)."""
        return None if self.layers[0].disable_adapters else self.layers[0].active_adapters[0]

    def bypassed(self) -> bool:
        """PEFT has merged an adapter, several are active, or the active one is not plain LoRA
        (dropout, DoRA, a bias): its own forward knows how, so the fused one steps aside."""
        layer = self.layers[0]
        if any(x.merged or x.active_adapters != layer.active_adapters for x in self.layers):
            return True
        if layer.disable_adapters:
            return False
        if len(layer.active_adapters) != 1:
            return True
        name = layer.active_adapters[0]
        return any(
            not isinstance(x.lora_dropout[name], torch.nn.Identity)
            or x.use_dora.get(name, False)
            or getattr(x, "lora_bias", {}).get(name, False)
            or x.scaling[name] != layer.scaling[name]  # one scaling and rank for the group
            or x.r[name] != layer.r[name]
            for x in self.layers
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., sum out_i): the layers' outputs side by side."""
        flat = x.reshape(-1, x.shape[-1])
        weight, bias = self.weights(flat.dtype)
        name = self.adapter()
        if name is None:  # the base model alone (the RL stage's reference)
            y = F.linear(flat, weight, bias)
        else:
            a = [layer.lora_A[name].weight for layer in self.layers]
            b = [layer.lora_B[name].weight for layer in self.layers]
            scaling = float(self.layers[0].scaling[name])
            if flat.dtype in self.wide:
                wide, stacked_a = self.augmented(name, flat.dtype, scaling, a, b)
                y = _AugmentedLoraLinear.apply(flat, wide, stacked_a, bias, scaling, *a, *b)
            else:
                y = _LoraLinear.apply(flat, weight, bias, scaling, *a, *b)
        return y.view(*x.shape[:-1], y.shape[-1])


class _FusedAttentionForward:
    """Replaces ``LlamaAttention.forward`` while no KV cache is in use."""

    def __init__(self, attn: torch.nn.Module):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        self.attn = attn
        self.original = attn.forward
        self.qkv = _FusedGroup([getattr(attn, name) for name in ATTENTION])
        self.o = _FusedGroup([attn.o_proj])
        q_width, k_width, v_width = self.qkv.outs
        self.qkv_widths = [q_width + k_width, v_width]
        self.qk_heads = [q_width // attn.head_dim, k_width // attn.head_dim]
        self.sdpa = attn.config._attn_implementation == "sdpa"
        self.interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            attn.config._attn_implementation, eager_attention_forward
        )
        self.shared_prefix = None
        """The PackedBatch's layout while tunelab.training.prefix_sharing packs the batch."""

    def __call__(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        cached = kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None
        if cached or self.qkv.bypassed():
            # PEFT's forward computes in the weights' dtype (a bf16 input is a training norm's)
            hidden_states = hidden_states.to(self.qkv.dtype)
            return self.original(hidden_states, position_embeddings, attention_mask, **kwargs)
        attn = self.attn
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, attn.head_dim)
        qkv = self.qkv(hidden_states)  # (B, T, H*D + 2*Hkv*D)
        compute_dtype = qkv.dtype
        # Rotary and attention in fp32 whatever the compute dtype: torch's CPU flash attention
        # is 2.8x slower in bf16 than in fp32 (forward + backward at this model's shapes),
        # while the casts of q, k, v and the output are small next to the matmuls around them.
        # Tensors are cut with split, whose backward is one concatenation, never with slices:
        # each slice's backward writes a zero tensor of the whole and adds it up (~5% of a
        # bf16 step here). v gets storage of its own: attention saves it for the backward, and
        # as a view it would keep the whole fp32 q|k|v alive until then.
        cos, sin = (t.float() for t in position_embeddings)  # (B, T, D)
        qk, v = qkv.split(self.qkv_widths, dim=-1)
        qk = _Rotary.apply(qk.float().view(hidden_shape), cos, sin)
        q, k = qk.split(self.qk_heads, dim=2)  # (B, T, H|Hkv, D)
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        if self.shared_prefix is not None:  # the gathers give q, k and v storage of their own
            out = self._attend_packed(q[0], k[0], v[0].float().view(k.shape[1:]))
            return self.o(out.to(compute_dtype)), None
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H|Hkv, T, D)
        v = v.float().contiguous().view(hidden_shape).transpose(1, 2)
        out, weights = self._attend(q, k, v, attention_mask, **kwargs)
        return self.o(out.reshape(*input_shape, -1).to(compute_dtype)), weights

    def _attend(self, q, k, v, mask, **kwargs):
        """(B, H, T, D) queries over (B, Hkv, T', D) keys -> (B, T, H*D)."""
        attn = self.attn
        dropout = 0.0 if not attn.training else attn.attention_dropout
        out, weights = self.interface(
            attn, q, k, v, mask, dropout=dropout, scaling=attn.scaling, **kwargs
        )
        return out.reshape(*out.shape[:2], -1), weights

    def _attend_packed(self, q, k, v):
        """Attention over a batch packed as its prefix tree (see
        tunelab.training.prefix_sharing): q (L, H, D), k and v (L, Hkv, D) of the packed
        tokens -> (1, L, H*D). Each segment's queries and keys (its ancestors' tokens, then its
        own) are gathered into padded batches of segments, a few groups of similar shapes
        (tunelab.training.prefix_sharing.attention_groups), each attended under its segments'
        masks in one call, and the outputs put back in packed order. A shared token's key and value
        are gathered into every segment below it, so the backward sums their gradients into
        the one copy: the same sums as separate copies per row.

        q, k and v are each gathered once for all groups and cut into the groups' parts: a
        gather per group and tensor would give each of q, k and v one gradient per group, each
        as large as the tensor (zeros, then the group's rows added), summed by autograd."""
        packed = self.shared_prefix
        groups = packed.groups
        queries = gather_rows(q, packed.query_index)
        keys, values = gather_rows(k, packed.key_index), gather_rows(v, packed.key_index)
        if len(groups) > 1:
            query_rows = [g.segments * g.query_length for g in groups]
            key_rows = [g.segments * g.key_length for g in groups]
            queries, keys = queries.split(query_rows), keys.split(key_rows)
            values = values.split(key_rows)
            outs = list(map(self._attend_gathered, queries, keys, values, groups))
            out = torch.cat(outs)
        else:
            out = self._attend_gathered(queries, keys, values, groups[0])
        out = gather_rows(out, packed.output_index)
        if packed.tail:  # dead tokens: nothing attends to them and they attend to nothing
            out = torch.cat([out, out.new_zeros(packed.tail, out.shape[-1])])
        return out[None]

    def _attend_group(self, q, k, v, group):
        """One group of segments (tunelab.training.prefix_sharing.AttentionGroup), each padded
        to the group's Lq queries and Lk keys: q (L, H, D), k and v (L, Hkv, D) of the packed
        tokens -> (S * Lq, H*D), segment by segment."""
        return self._attend_gathered(
            gather_rows(q, group.query_index),
            gather_rows(k, group.key_index),
            gather_rows(v, group.key_index),
            group,
        )

    def _attend_gathered(self, q, k, v, group):
        """:meth:`_attend_group` of the group's gathered rows: q (S * Lq, H, D), k and v
        (S * Lk, Hkv, D) -> (S * Lq, H*D)."""
        n, lq, lk = group.segments, group.query_length, group.key_length

        def batched(t, length):  # (n * length, h, D) -> (n, h, length, D)
            return t.view(n, length, *t.shape[1:]).transpose(1, 2)

        # torch's SDPA directly, to read the grouped keys in place (enable_gqa): given a mask,
        # transformers' SDPA wrapper first copies every key and value head per query head, a
        # copy (and its backward) that made the rows' attention ~30% slower on CPU.
        out = F.scaled_dot_product_attention(
            batched(q, lq),
            batched(k, lk),
            batched(v, lk),
            attn_mask=group.attention_mask,
            dropout_p=self.attn.attention_dropout if self.attn.training else 0.0,
            scale=self.attn.scaling,
            enable_gqa=True,
        )  # (n, H, Lq, D)
        return out.transpose(1, 2).reshape(n * lq, -1)

    def kept(self, hidden_states, position_embeddings, kept):
        """The attention output (1, K, C) of the K ``kept`` tokens only
        (tunelab.training.prefix_sharing.KeptTokens): keys and values from every packed token
        of ``hidden_states`` (1, L, C), queries from the kept ones."""
        attn = self.attn
        hidden_shape = (*hidden_states.shape[:-1], -1, attn.head_dim)
        qkv = self.qkv(hidden_states)
        compute_dtype = qkv.dtype
        cos, sin = (t.float() for t in position_embeddings)
        qk, v = qkv.split(self.qkv_widths, dim=-1)
        qk = _Rotary.apply(qk.float().view(hidden_shape), cos, sin)
        q, k = qk.split(self.qk_heads, dim=2)
        out = self._attend_group(q[0], k[0], v[0].float().view(k.shape[1:]), kept.attention)
        return self.o(out.to(compute_dtype))[None]


class _FusedLastLayerForward:
    """Replaces the last decoder layer's forward: while a packed batch asks for the final
    hidden states of a few tokens only (``KeptTokens``: a reward model reads one a row), the
    layer computes attention queries, output projection, residual and MLP for those tokens
    alone and returns (1, K, C); the layer's own forward otherwise."""

    def __init__(self, layer: torch.nn.Module, attention: _FusedAttentionForward):
        self.layer, self.attention = layer, attention
        self.original = layer.forward

    def __call__(self, hidden_states, *args, **kwargs):
        packed = self.attention.shared_prefix
        if packed is None or packed.keep is None or self.attention.qkv.bypassed():
            return self.original(hidden_states, *args, **kwargs)
        layer, kept = self.layer, packed.keep
        normed = layer.input_layernorm(hidden_states)
        attended = self.attention.kept(normed, kwargs["position_embeddings"], kept)
        residual = gather_rows(hidden_states[0], kept.positions)[None]  # (1, K, C)
        hidden = residual + attended
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


class _FusedMLPForward:
    """Replaces ``LlamaMLP.forward``: down(act(gate(x)) * up(x)) with gate and up as one matmul."""

    def __init__(self, mlp: torch.nn.Module):
        self.mlp = mlp
        self.original = mlp.forward
        self.gate_up = _FusedGroup([getattr(mlp, name) for name in MLP_IN])
        self.down = _FusedGroup([mlp.down_proj])
        silu = type(mlp.act_fn).__name__ in ("SiLU", "SiLUActivation")
        gate_width, up_width = self.gate_up.outs
        self.swiglu_half = gate_width if silu and gate_width == up_width else None
        """Width of gate (= up) when the MLP is SwiGLU, computed by :class:`_SwiGLU`."""

    def __call__(self, x):
        if self.gate_up.bypassed():
            return self.original(x.to(self.gate_up.dtype))
        gate_up = self.gate_up(x)
        if self.swiglu_half is not None:
            return self.down(_SwiGLU.apply(gate_up, self.swiglu_half))
        gate, up = gate_up.split(self.gate_up.outs, dim=-1)
        return self.down(self.mlp.act_fn(gate) * up)


class _FusedNormForward:
    """Replaces ``LlamaRMSNorm.forward`` (frozen weight) with :class:`_RMSNorm`.

    A block's norms hand their output to matmuls: in training they return it in the compute
    dtype, and so set the dtype of everything up to the block's residual adds. The final norm
    feeds the output head and the loss, which stay fp32; so does everything in eval mode
    (validation losses are the ones the served, fp32 adapter gives).
    """

    def __init__(self, norm: torch.nn.Module, compute_dtype: torch.dtype):
        self.norm, self.compute_dtype = norm, compute_dtype
        self.weight, self.eps = norm.weight, norm.variance_epsilon

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = self.compute_dtype if self.norm.training else x.dtype
        return _RMSNorm.apply(x, self.weight, self.eps, out_dtype)


def fuse_lora_for_training(
    peft_model: torch.nn.Module, compute_dtype: torch.dtype = torch.float32
) -> bool:
    """Switch a PEFT LoRA model on a Llama-style decoder to the fused forward, in place.

    ``compute_dtype=torch.bfloat16`` trains in bf16 mixed precision (see
    tunelab.training.precision): the blocks' matmuls and activations in bf16 from a bf16 copy of
    the frozen weights; residual stream, norm statistics, rotary, attention, loss, LoRA
    parameters and their gradients in fp32. It applies in training mode only.

    Returns False and leaves the model untouched when it is not one this module knows how to
    compute exactly (the caller then trains through PEFT's own forward).
    """
    reason = _unsupported(peft_model)
    if reason:
        logger.info("fused LoRA training off (%s); using PEFT's forward", reason)
        return False
    decoder = peft_model.get_decoder()
    for layer in decoder.layers:
        layer.self_attn.forward = _FusedAttentionForward(layer.self_attn)
        layer.mlp.forward = _FusedMLPForward(layer.mlp)
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.forward = _FusedNormForward(norm, compute_dtype)
    last = decoder.layers[-1]
    last.forward = _FusedLastLayerForward(last, last.self_attn.forward)
    decoder.norm.forward = _FusedNormForward(decoder.norm, torch.float32)
    return True


def is_fused(peft_model: torch.nn.Module) -> bool:
    """Whether the fused forward is (still) in place on every layer.

    Something may put the model's own forwards back: transformers >= 5.25 "kernelizes" a model
    on ``.train()``/``.eval()`` by default (``use_kernels``), resetting every layer's forward.
    TuneLab turns that off (``USE_HUB_KERNELS``, set in ``tunelab/__init__.py``); this check is
    what lets :class:`tunelab.training.fast_path.FastPath` notice if it happens anyway.
    """
    decoder = peft_model.get_decoder()
    return all(
        isinstance(vars(layer.self_attn).get("forward"), _FusedAttentionForward)
        and isinstance(vars(layer.input_layernorm).get("forward"), _FusedNormForward)
        for layer in decoder.layers
    )


def _norms(decoder: torch.nn.Module) -> list[torch.nn.Module]:
    pairs = [(layer.input_layernorm, layer.post_attention_layernorm) for layer in decoder.layers]
    return [norm for pair in pairs for norm in pair] + [decoder.norm]


def _unsupported(peft_model: torch.nn.Module) -> str | None:
    from peft.tuners.lora import Linear as LoraLinear

    # Other adapters may sit beside ``default`` (the RL stage's frozen reward adapter): the
    # fused forward computes ``default`` and steps aside while another one is active.
    config = peft_model.peft_config.get("default")
    if config is None:
        return "no adapter named default"
    if config.lora_dropout or config.bias != "none" or config.use_dora or config.use_rslora:
        return "dropout, bias, DoRA or rsLoRA"
    decoder = peft_model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not layers:
        return "no decoder layers"
    if any(p.dtype != torch.float32 for p in peft_model.parameters()):
        # Llama's RMSNorm rounds to the input dtype between its two products: kept exact for
        # fp32 (the CPU case) only; half-precision models train through PEFT's forward
        return "not a float32 model"
    for layer in layers:
        attn, mlp = layer.self_attn, getattr(layer, "mlp", None)
        if type(attn).__name__ != "LlamaAttention" or type(mlp).__name__ != "LlamaMLP":
            return f"{type(attn).__name__}/{type(mlp).__name__} is not a Llama block"
        for module, names in ((attn, (*ATTENTION, "o_proj")), (mlp, (*MLP_IN, "down_proj"))):
            for name in names:
                linear = getattr(module, name)
                if not isinstance(linear, LoraLinear) or linear.active_adapters != ["default"]:
                    return f"{name} has no LoRA adapter"
                if linear.merged or getattr(linear, "fan_in_fan_out", False):
                    return f"{name} is merged or fan-in-fan-out"
    for norm in _norms(decoder):
        if type(norm).__name__ != "LlamaRMSNorm" or norm.weight.requires_grad:
            return f"{type(norm).__name__} is not a frozen LlamaRMSNorm"
    return None

"""A lean decode step for Llama-shaped models, over a preallocated KV cache.

Why: a decode step of SmolLM2-135M at batch 1 is ~210 small matmuls. Through transformers'
``forward`` each step also builds a fresh attention mask, runs the output-capturing and
deprecation wrappers of every module, and grows every layer's cache with ``torch.cat`` (a copy
of the whole cache per layer per token). This step keeps only the arithmetic: the same linear
modules are called (so LoRA hooks and PEFT wrappers on them still apply; a step without
adapters over int8/int4 layers calls their kernels directly, :class:`LeanDecoder`), in the
order and with the operations of ``LlamaDecoderLayer`` / ``LlamaAttention`` / transformers' SDPA path for
one query token (grouped-query heads packed as in ``pack_gqa``), so its greedy tokens equal
the reference forward's (``tests/serving/test_fast_decode.py``).

The cache (:class:`KVCache`) holds per layer a (B, kv_heads, capacity, head_dim) key and value
buffer with spare columns on the right: a step writes its column in place. Merging new rows or
dropping finished ones rebuilds the buffers (rare: once per admission or finish, not per token).

Supported: ``model_type`` llama (SmolLM2, TinyLlama, Llama 2/3) and mistral/qwen2 without a
sliding window, plain or wrapped by PEFT. Anything else keeps the transformers path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab.serving.quantize import Int4Linear, Int8Linear, Int8Product

_SUPPORTED = {"llama", "mistral", "qwen2"}
_GROW = 64
"""Spare cache columns added when a cache is (re)built or full: one rebuild per 64 tokens."""


def causal_lm_core(model: torch.nn.Module) -> torch.nn.Module | None:
    """The ``*ForCausalLM`` module under ``model`` (unwrapping PEFT) if the lean step supports
    it, else None."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(core, "config", None)
    if config is None or getattr(config, "model_type", None) not in _SUPPORTED:
        return None
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return None  # mistral/qwen2 with a window: the mask is not the plain padding mask
    inner = getattr(core, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(core, "lm_head"):
        return None
    if getattr(inner, "rotary_emb", None) is None:
        return None
    return core


@dataclass
class _LayerView:
    keys: torch.Tensor
    values: torch.Tensor


class KVCache:
    """Per layer, keys and values of shape (B, kv_heads, capacity, head_dim); the first
    ``length`` columns are in use."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], spare: int = _GROW):
        k0 = layers[0][0]
        b, h, length, d = k0.shape
        self.length = length
        self.k = torch.empty((len(layers), b, h, length + spare, d), dtype=k0.dtype)
        self.v = torch.empty_like(self.k)
        for i, (k, v) in enumerate(layers):
            self.k[i, :, :, :length] = k
            self.v[i, :, :, :length] = v

    @property
    def layers(self) -> list[_LayerView]:
        """Views of the columns in use, layer by layer (what the runner merges and drops)."""
        n = self.length
        return [_LayerView(self.k[i, :, :, :n], self.v[i, :, :, :n]) for i in range(len(self.k))]

    def reserve(self) -> None:
        """Room for one more column."""
        if self.length < self.k.shape[3]:
            return
        k, v = self.k, self.v
        shape = list(k.shape)
        shape[3] += _GROW
        self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        self.k[:, :, :, : self.length] = k
        self.v[:, :, :, : self.length] = v


class LeanDecoder:
    """One token per row through ``core`` (a supported ``*ForCausalLM``), cache in place.

    A step where no row has a LoRA adapter and the batch is one the int8 (or int4) kernel
    multiplies (fewer rows than the layers' ``dense_rows``) runs the *plain* path: q/k/v as one
    product and gate/up as another (:class:`~tunelab.serving.quantize.Int8Product`, over the
    same weights), every product a direct kernel call, no module calls. Measured (SmolLM2-135M,
    int8+bf16, one row, one thread, thread CPU; bench/profile_serving_step.py) the int8
    products were ~23 ms of a ~34 ms step and most of the rest per-op dispatch; the plain path
    took the step from 32.9 to 30.0 ms. A step with adapter rows whose LoRA folds into the
    prepacked bf16 products calls the adapter cache's folded products (``folds``,
    ``AdapterCache.decode_folds``: per input, the same operations as the modules' path).
    Other steps call the modules, so LoRA hooks and PEFT wrappers apply. Both paths compute the same operations in the same order as transformers'
    layers; only how many calls they take differs.
    """

    fuse: bool = True
    """Whether steps without adapters may take the plain path (False: for side-by-side timing,
    bench/profile_serving_step.py's ``:unfused`` variants)."""

    def __init__(self, core: torch.nn.Module):
        self.core = core
        self.inner = core.model
        config = core.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        first = self.inner.layers[0].self_attn
        self.head_dim = int(getattr(first, "head_dim", config.hidden_size // self.heads))
        self.scaling = float(getattr(first, "scaling", self.head_dim**-0.5))
        self._plain = _plain_products(core)
        """Per layer (q|k|v, o, gate|up, down) weight-only products, and the head's; None
        when the model's layers are not all plain int8/int4 layers (then every step calls the
        modules)."""
        self.dtype = self.inner.embed_tokens.weight.dtype
        """The activations' dtype (the embeddings')."""
        self.slots = _input_slots(core)
        """Per layer, the linear modules called on one input each ((q, k, v), (o,), (gate,
        up), (down,)): what an adapter cache's folded products are planned over
        (``AdapterCache.decode_folds``); None when an MLP is not SiLU-gated."""

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        *,
        adapters: bool = False,
        folds: list[tuple] | None = None,
    ) -> torch.Tensor:
        """Logits (B, V) of the next token. ``ids``, ``positions``: (B, 1); ``mask``: (B, L + 1),
        1 where a column holds a real token (the new one last). ``adapters``: whether a row of
        the batch has a LoRA adapter (then every product goes through its module's hooks).
        ``folds``: per layer of :attr:`slots`, a callable per input returning its layers'
        outputs, LoRA included (``AdapterCache.decode_folds``), called instead of the
        modules."""
        cache.reserve()
        at = cache.length
        b = ids.shape[0]
        heads, kv_heads, d = self.heads, self.kv_heads, self.head_dim
        groups = heads // kv_heads
        h = self.inner.embed_tokens(ids)  # (B, 1, C)
        cos, sin = self.inner.rotary_emb(h, positions)  # (B, 1, D) each: over heads
        half = d // 2
        # rotate_half(x) * sin == roll(x, D/2) * [-sin_1 | sin_2], exactly (a sign flip).
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        # The additive mask SDPA would make of a boolean one for every layer, made once.
        attn_mask = torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
        attn_mask = attn_mask.masked_fill_(mask == 0, float("-inf"))[:, None, None, :]
        plain = self._plain
        if plain is not None and (adapters or not self.fuse or b >= plain.dense_rows):
            plain = None
        if plain is not None and h.dtype != plain.head.scales.dtype:
            plain = None
        qk_width = (heads + kv_heads) * d
        for i, layer in enumerate(self.inner.layers):
            attn = layer.self_attn
            x = _rms_norm(layer.input_layernorm, h)
            if folds is not None:
                fold_qkv, fold_o, fold_gate_up, fold_down = folds[i]
                q, k, v = fold_qkv(x)
                q = _rope(q.view(b, heads, d), cos, sin, half)
                k = _rope(k.view(b, kv_heads, d), cos, sin, half)
                v = v.view(b, kv_heads, d)
            elif plain is not None:
                qkv, o_proj, gate_up, down = plain.layers[i]
                y = qkv(x.view(b, -1))  # (B, (H + 2 Hkv) D)
                qk = _rope(y[:, :qk_width].view(b, heads + kv_heads, d), cos, sin, half)
                q, k = qk[:, :heads], qk[:, heads:]  # (B, H, D), (B, Hkv, D)
                v = y[:, qk_width:].view(b, kv_heads, d)
            else:
                q = _rope(attn.q_proj(x).view(b, heads, d), cos, sin, half)
                k = _rope(attn.k_proj(x).view(b, kv_heads, d), cos, sin, half)
                v = attn.v_proj(x).view(b, kv_heads, d)
            keys, values = cache.k[i], cache.v[i]  # (B, Hkv, capacity, D)
            keys[:, :, at] = k
            values[:, :, at] = v
            # One query token: each kv head's query heads become its "sequence" (pack_gqa).
            o = F.scaled_dot_product_attention(
                q.reshape(b, kv_heads, groups, d),
                keys[:, :, : at + 1],
                values[:, :, : at + 1],
                attn_mask=attn_mask,
                scale=self.scaling,
            )  # (B, Hkv, groups, D): heads in order, as (B, 1, H * D)
            if folds is not None:
                h = h + fold_o(o.reshape(b, 1, -1))[0]
                x = _rms_norm(layer.post_attention_layernorm, h)
                gate, up = fold_gate_up(x)
                h = h + fold_down(F.silu(gate) * up)[0]
            elif plain is not None:
                h = h + o_proj(o.reshape(b, -1)).view(b, 1, -1)
                x = _rms_norm(layer.post_attention_layernorm, h)
                gu = gate_up(x.view(b, -1))  # (B, 2 I): [gate | up]
                inner = gu.shape[-1] // 2
                h = h + down(F.silu(gu[:, :inner]) * gu[:, inner:]).view(b, 1, -1)
            else:
                h = h + attn.o_proj(o.reshape(b, 1, -1))
                x = _rms_norm(layer.post_attention_layernorm, h)
                h = h + layer.mlp(x)
        cache.length = at + 1
        h = _rms_norm(self.inner.norm, h)
        if plain is not None:
            return plain.head(h.view(b, -1))  # (B, V)
        return self.core.lm_head(h[:, -1, :])  # (B, V)


@dataclass
class _PlainProducts:
    layers: list[tuple[Int8Product, Int8Product, Int8Product, Int8Product]]
    head: Int8Product
    dense_rows: int


def _plain_products(core: torch.nn.Module) -> _PlainProducts | None:
    """The products of the plain path (see :class:`LeanDecoder`), fusing q/k/v and gate/up
    (their modules' weights become views into the fused ones); None unless every layer of
    ``core`` is a plain :class:`Int8Linear` or :class:`Int4Linear` with a SiLU-gated MLP."""
    layers = []
    for layer in core.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if type(getattr(mlp, "act_fn", None)).__name__ not in _SILU:
            return None
        parts = [
            [attn.q_proj, attn.k_proj, attn.v_proj],
            [attn.o_proj],
            [mlp.gate_proj, mlp.up_proj],
            [mlp.down_proj],
        ]
        if any(type(m) not in (Int8Linear, Int4Linear) for group in parts for m in group):
            return None
        layers.append(parts)
    head = Int8Product.of([core.lm_head])
    if head is None or not layers:
        return None
    products = [tuple(Int8Product.of(group) for group in parts) for parts in layers]
    if any(p is None for parts in products for p in parts):
        return None  # e.g. q/k/v with and without a bias: keep the modules
    dense_rows = min([head.dense_rows] + [p.dense_rows for parts in products for p in parts])
    return _PlainProducts(products, head, dense_rows)  # type: ignore[arg-type]


def _input_slots(core: torch.nn.Module) -> list[tuple[tuple[torch.nn.Module, ...], ...]] | None:
    """:attr:`LeanDecoder.slots`: per layer ((q, k, v), (o,), (gate, up), (down,)), or None
    unless every layer's MLP is ``down(silu(gate(x)) * up(x))`` (transformers' Llama MLP)."""
    slots = []
    for layer in core.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if type(mlp).__name__ not in _GATED_MLPS:
            return None
        if type(getattr(mlp, "act_fn", None)).__name__ not in _SILU:
            return None
        slots.append(
            (
                (attn.q_proj, attn.k_proj, attn.v_proj),
                (attn.o_proj,),
                (mlp.gate_proj, mlp.up_proj),
                (mlp.down_proj,),
            )
        )
    return slots


_GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP"}
"""transformers' MLPs whose forward is ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""

_SILU = {"SiLU", "SiLUActivation"}
"""torch's and transformers' SiLU modules: ``F.silu`` of their input."""

_RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"}


def _rms_norm(norm: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``norm(h)`` for transformers' Llama-family RMSNorm, its operations without the module
    call (~120 a step); any other norm module is called."""
    if type(norm).__name__ not in _RMS_NORMS:
        return norm(h)
    x = h.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x.to(h.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
    """transformers' ``x * cos + rotate_half(x) * sin`` for ``x`` (B, heads, D) and ``cos``
    (B, 1, D), with ``sin`` already signed as ``[-sin_1 | sin_2]``: the same products and sum,
    three ops fewer."""
    return x * cos + torch.roll(x, half, dims=-1) * sin

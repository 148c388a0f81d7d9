"""A lean decode step for Llama-shaped models, over a preallocated KV cache.

Why: a decode step of SmolLM2-135M at batch 1 is ~210 small matmuls. Through transformers'
``forward`` each step also builds a fresh attention mask, runs the output-capturing and
deprecation wrappers of every module, and grows every layer's cache with ``torch.cat`` (a copy
of the whole cache per layer per token). This step keeps only the arithmetic: the same modules
are called (so LoRA hooks and PEFT wrappers on the linear layers still apply), in the order and
with the operations of ``LlamaDecoderLayer`` / ``LlamaAttention`` / transformers' SDPA path for
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
    """One token per row through ``core`` (a supported ``*ForCausalLM``), cache in place."""

    def __init__(self, core: torch.nn.Module):
        self.core = core
        self.inner = core.model
        config = core.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        first = self.inner.layers[0].self_attn
        self.head_dim = int(getattr(first, "head_dim", config.hidden_size // self.heads))
        self.scaling = float(getattr(first, "scaling", self.head_dim**-0.5))

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """Logits (B, V) of the next token. ``ids``, ``positions``: (B, 1); ``mask``: (B, L + 1),
        1 where a column holds a real token (the new one last)."""
        cache.reserve()
        at = cache.length
        b = ids.shape[0]
        groups = self.heads // self.kv_heads
        h = self.inner.embed_tokens(ids)  # (B, 1, C)
        cos, sin = self.inner.rotary_emb(h, positions)  # (B, 1, D) each
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, 1, D): over heads
        attn_mask = mask.bool()[:, None, None, :]  # (B, 1, 1, L + 1): shared by all heads
        for i, layer in enumerate(self.inner.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin  # (B, H, 1, D)
            k = k * cos + _rotate_half(k) * sin  # (B, Hkv, 1, D)
            keys, values = cache.k[i], cache.v[i]  # (B, Hkv, capacity, D)
            keys[:, :, at] = k[:, :, 0]
            values[:, :, at] = v[:, :, 0]
            # One query token: each kv head's query heads become its "sequence" (pack_gqa).
            o = F.scaled_dot_product_attention(
                q.reshape(b, self.kv_heads, groups, self.head_dim),
                keys[:, :, : at + 1],
                values[:, :, : at + 1],
                attn_mask=attn_mask,
                scale=self.scaling,
            )  # (B, Hkv, groups, D)
            o = o.reshape(b, self.heads, 1, self.head_dim).transpose(1, 2).contiguous()
            h = h + attn.o_proj(o.reshape(b, 1, -1))
            x = layer.post_attention_layernorm(h)
            h = h + layer.mlp(x)
        cache.length = at + 1
        h = self.inner.norm(h)
        return self.core.lm_head(h[:, -1, :])  # (B, V)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

"""A merged Llama-architecture model as a GGUF file, written as llama.cpp's
``convert_hf_to_gguf.py`` writes Llama models, with the ``gguf`` package:

- tensor names from gguf's own name map (``model.layers.0.self_attn.q_proj.weight`` ->
  ``blk.0.attn_q.weight``); a tied output head is left out (llama.cpp reuses token_embd);
- the query and key projections permuted from Hugging Face's rotary layout (halves) to
  llama.cpp's (interleaved pairs), per head: ``convert_hf_to_gguf``'s ``LlamaModel.permute``;
- 1-D tensors (norms) in F32, matrices in F16 or Q8_0 (a matrix whose rows are not a whole
  number of Q8_0 blocks stays F16, as llama.cpp does);
- the tokenizer as a BPE (``gpt2``) vocabulary with token types, merges, special ids and the
  chat template under ``tokenizer.chat_template``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from tunelab.export.source import ExportError

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("f16", "q8_0")
Q8_0_BLOCK = 32
"""Q8_0 quantizes rows in blocks of 32 values (one scale each)."""


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary layout -> llama.cpp's, along the output rows: (out, ...) with out =
    n_head * head_dim. Exactly ``LlamaModel.permute`` of convert_hf_to_gguf.py."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def check_llama(model) -> None:
    config = model.config
    if type(model).__name__ != "LlamaForCausalLM":
        raise ExportError(
            f"GGUF export supports Llama-architecture models (LlamaForCausalLM); this base is "
            f"{type(model).__name__} ({config.model_type!r})"
        )
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind != "default":
        raise ExportError(f"GGUF export does not write rope scaling {kind!r} yet")


def gguf_tensor_name(name_map, hf_name: str) -> str:
    new = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if new is None:
        raise ExportError(f"no GGUF name for tensor {hf_name!r}")
    return new


def write_gguf_model(model, tokenizer, path: Path, quantization: str, name: str) -> Path:
    import gguf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    config = model.config
    check_llama(model)
    arch = gguf.MODEL_ARCH.LLAMA
    n_layers = config.num_hidden_layers
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    file_type = (
        gguf.LlamaFileType.MOSTLY_F16 if quantization == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    )

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tokenizer, config.vocab_size)

    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd as the output head when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        data = tensor.detach().to(torch.float32).numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_rotary(data, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_rotary(data, n_kv)
        new_name = gguf_tensor_name(name_map, hf_name)
        if data.ndim == 1:
            writer.add_tensor(new_name, data.astype(np.float32))
        elif quantization == "q8_0" and data.shape[-1] % Q8_0_BLOCK == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(new_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(new_name, data.astype(np.float16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    logger.info("wrote %s (%s)", path, quantization)
    return path


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return theta


def add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """The BPE vocabulary as llama.cpp's ``get_vocab_base`` writes it for a ``gpt2`` tokenizer:
    every id up to the model's vocab size, special added tokens as CONTROL, other added tokens
    USER_DEFINED, ids without a token as UNUSED padding; then merges and special ids."""
    import json

    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(
            f"GGUF export writes BPE (gpt2-style) tokenizers; this one is {model.get('type')!r}"
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.id: t for t in _added_tokens(backend)}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokens))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = model.get("merges", [])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key, token in (
        ("bos", tokenizer.bos_token),
        ("eos", tokenizer.eos_token),
        ("unk", tokenizer.unk_token),
        ("pad", tokenizer.pad_token),
    ):
        if token is not None:
            getattr(writer, f"add_{key}_token_id")(tokenizer.convert_tokens_to_ids(token))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


class _Added:
    def __init__(self, entry: dict):
        self.id, self.special = entry["id"], bool(entry.get("special"))


def _added_tokens(backend: dict) -> list[_Added]:
    return [_Added(e) for e in backend.get("added_tokens", [])]


def _pre_tokenizer(tokens: list[str]) -> str:
    """llama.cpp picks a pre-tokenizer (the regex that splits text before BPE) by name.
    convert_hf_to_gguf.py finds it by hashing a tokenization; we take the name from a GGUF that
    llama.cpp wrote for the same vocabulary (the catalog's embedded models), else ``default``."""
    for known, pre in _known_vocabularies():
        if len(known) == len(tokens) and list(known) == tokens:
            return pre
    logger.warning("pre-tokenizer of this vocabulary unknown; writing 'default'")
    return "default"


@functools.cache
def _known_vocabularies() -> tuple[tuple[tuple[str, ...], str], ...]:
    """(tokens, pre-tokenizer name) of each catalog GGUF; read once (parsing takes seconds)."""
    import gguf

    from tunelab.models.catalog import CATALOG

    found = []
    for entry in CATALOG.values():
        path = entry.gguf_path()
        if path is None:
            continue
        reader = gguf.GGUFReader(path)
        tokens, pre = (
            reader.fields.get("tokenizer.ggml.tokens"),
            reader.fields.get("tokenizer.ggml.pre"),
        )
        if tokens is not None and pre is not None:
            found.append((tuple(tokens.contents()), pre.contents()))
    return tuple(found)

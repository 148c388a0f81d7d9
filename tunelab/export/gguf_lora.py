"""The adapter alone in llama.cpp's LoRA GGUF format, for ``llama-cli -m base.gguf --lora
adapter.gguf`` (or Ollama's ``ADAPTER``), as llama.cpp's ``convert_lora_to_gguf.py`` writes it:

- ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``;
- per adapted linear layer, ``<base tensor name>.lora_a`` (r, in) and ``.lora_b`` (out, r),
  named as in the base model's GGUF (``blk.0.attn_q.weight.lora_a``);
- the rotary permutation of the query/key projections applied to ``lora_b``'s rows (it
  reorders the layer's outputs, which are B's rows; A is unchanged).

llama.cpp scales each pair by ``alpha / rank`` (rank read from the tensors). The engine's scale
``s`` of a layer can differ from ``alpha / r`` (rsLoRA, alpha patterns); the difference is
folded into ``lora_b`` so that llama.cpp applies exactly ``s · B A`` for every layer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tunelab.export.gguf_model import check_llama, gguf_tensor_name, permute_rotary
from tunelab.export.source import ExportSource, read_lora
from tunelab.models import load_causal_lm

logger = logging.getLogger(__name__)


def write_gguf_lora(source: ExportSource, path: Path, quantization: str = "f16") -> Path:
    import gguf

    model = load_causal_lm(source.base.path)
    check_llama(model)
    config = model.config
    factors = read_lora(source.bundle, model, source.label)
    alpha = float(source.adapter_config().get("lora_alpha", 8))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    dtype = np.float16 if quantization == "f16" else np.float32

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(f"{source.label} LoRA")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for module, f in sorted(factors.items()):
        A, B = f.A.numpy(), f.B.numpy()  # (r, in), (out, r)
        rank = A.shape[0]
        B = B * (f.scale * rank / alpha)  # llama.cpp applies alpha / rank; we need f.scale
        if module.endswith("self_attn.q_proj"):
            B = permute_rotary(B, config.num_attention_heads)
        elif module.endswith("self_attn.k_proj"):
            B = permute_rotary(B, config.num_key_value_heads)
        name = gguf_tensor_name(name_map, module + ".weight")
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(A, dtype=dtype))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(B, dtype=dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    logger.info("wrote LoRA GGUF %s (%d layers)", path, len(factors))
    return path

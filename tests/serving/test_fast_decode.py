"""The lean decode step (``fast_decode.py``) against transformers' forward: the same greedy
tokens in fp32 and in bf16, through continuous batching, candidates, cache growth and
per-row LoRA adapters."""

import pytest
import torch
from lora_helpers import TARGETS, rambling_model

from tunelab.data.template import prompt_ids
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.serving.fast_decode import KVCache, causal_lm_core
from tunelab.serving.generation import GenerationParams
from tunelab.serving.runner import ModelRunner, RowGroup

QUESTIONS = ["hi", "what colour is the sky?", "x", "a long question about owls and cats", "ok"]


def rambling(tiny_model_dir, dtype):
    """The tiny model with wider random weights: it rambles in varied tokens, never ending."""
    return rambling_model(tiny_model_dir).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_step_gives_the_reference_tokens(tiny_model_dir, tok, prompts, dtype):
    model = rambling(tiny_model_dir, dtype)
    lean, reference = ModelRunner(model, tok), ModelRunner(model, tok, lean_decode=False)
    assert lean._lean is not None and reference._lean is None
    # 80 tokens: past the 64 spare columns, so the cache grows mid-generation.
    greedy = GenerationParams(temperature=0, max_output_tokens=80)
    groups = [RowGroup(p, greedy, n=1 + i % 2) for i, p in enumerate(prompts)]
    expected = [r.token_ids for r in reference.generate(groups)]
    assert all(len(t) == 80 for ids in expected for t in ids)
    assert [r.token_ids for r in lean.generate(groups)] == expected
    # Rows joining and leaving a running batch: the cache is merged and cut in between.
    few = lean.generate(groups, max_batch_size=2)
    assert [r.token_ids for r in few] == expected


def test_lean_step_applies_per_row_adapters_as_peft_does(tiny_model_dir, tok, prompts, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    peft_model = get_peft_model(rambling(tiny_model_dir, torch.float32), config).eval()
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    assert causal_lm_core(peft_model) is not None  # PEFT-wrapped llama: the lean step serves it
    greedy = GenerationParams(temperature=0, max_output_tokens=20)
    groups = [RowGroup(p, greedy) for p in prompts]
    lean = ModelRunner(peft_model, tok).generate(groups)
    reference = ModelRunner(peft_model, tok, lean_decode=False).generate(groups)
    assert [r.token_ids for r in lean] == [r.token_ids for r in reference]
    with peft_model.disable_adapter():
        base = ModelRunner(peft_model, tok).generate(groups)
    assert [r.token_ids for r in base] != [r.token_ids for r in lean]  # the adapter mattered


def test_cache_grows_keeping_its_columns():
    k = torch.arange(2 * 3 * 5 * 4, dtype=torch.float32).view(2, 3, 5, 4)
    cache = KVCache([(k, -k), (k + 1, k - 1)], spare=1)
    cache.reserve()  # one spare column: nothing to do
    assert cache.k.shape[3] == 6
    cache.length = 6
    cache.reserve()
    assert cache.k.shape[3] > 6 and cache.length == 6
    assert torch.equal(cache.layers[1].keys[:, :, :5], k + 1)
    assert torch.equal(cache.layers[0].values[:, :, :5], -k)


def test_models_it_does_not_know_keep_the_transformers_path():
    class Other(torch.nn.Module):
        config = type("C", (), {"model_type": "gpt2"})()

    assert causal_lm_core(Other()) is None


REAL_PROMPTS = [
    "Write two sentences about the water cycle.",
    "What is the capital of France?",
    "Name three colours.",
    "Route this ticket to billing, technical, account or shipping: my parcel is late.",
]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_real_model_lean_step_gives_the_reference_tokens(default_model_dir, precision):
    """The default model, a fixed prompt set, batched: the serving path (lean step, in the
    engine's precision) against transformers' forward in the same precision."""
    from tunelab.serving.quantize import apply_precision

    tok = load_tokenizer(default_model_dir)
    model = apply_precision(load_causal_lm(default_model_dir).eval(), precision)
    greedy = GenerationParams(temperature=0, max_output_tokens=48)
    groups = [
        RowGroup(prompt_ids(tok, [{"role": "user", "content": q}]), greedy) for q in REAL_PROMPTS
    ]
    lean = ModelRunner(model, tok).generate(groups)
    reference = ModelRunner(model, tok, lean_decode=False).generate(groups)
    assert [r.token_ids for r in lean] == [r.token_ids for r in reference]
    assert sum(len(t) for r in lean for t in r.token_ids) > 4 * 10

"""The lean step's plain path (``fast_decode.LeanDecoder``, ``quantize.Int8Product``): steps
without adapters multiply q/k/v and gate/up as one int8 product each, over the same int8
weights, with the same outputs as the separate layers; steps where a row has an adapter call
the layers, so their LoRA hooks apply."""

import pytest
import torch
from lora_helpers import make_adapter_bundle, rambling_model

from tunelab.serving.adapters import AdapterCache
from tunelab.serving.generation import GenerationParams
from tunelab.serving.quantize import Int4Linear, Int8Linear, Int8Product, apply_precision
from tunelab.serving.runner import ModelRunner, RowGroup

QUESTIONS = ["hi", "what colour is the sky?", "a long question about owls and cats"]


def rambling_int8(tiny_model_dir, precision="int8+bf16"):
    """The tiny model with wider random weights (it rambles, never ending), quantized."""
    return apply_precision(rambling_model(tiny_model_dir), precision)


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


def test_fused_product_equals_the_separate_layers_and_shares_their_weights():
    torch.manual_seed(0)
    layers = [Int8Linear(torch.nn.Linear(64, n, bias=True)) for n in (64, 32, 32)]
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    separate = [m(x) for m in layers]
    fused = Int8Product(layers)
    assert torch.equal(fused(x), torch.cat(separate, dim=-1))  # bit-equal, bias included
    # The layers now read views into the fused buffers: the int8 weights are held once, and
    # each layer alone still gives its output.
    base = fused.qweight.untyped_storage().data_ptr()
    for m, expected in zip(layers, separate, strict=True):
        assert m.qweight.untyped_storage().data_ptr() == base
        assert m.scales.untyped_storage().data_ptr() == fused.scales.untyped_storage().data_ptr()
        assert torch.equal(m(x), expected)


def test_only_plain_int8_layers_of_one_input_are_fused():
    linear = torch.nn.Linear(64, 32)
    assert Int8Product.of([linear]) is None  # not int8
    assert Int8Product.of([Int8Linear(linear), Int8Linear(torch.nn.Linear(32, 32))]) is None
    no_bias = Int8Linear(torch.nn.Linear(64, 32, bias=False))
    assert Int8Product.of([Int8Linear(linear), no_bias]) is None


@pytest.mark.parametrize("precision", ["int8", "int8+bf16"])
def test_plain_steps_give_the_tokens_of_the_layer_by_layer_steps(
    tiny_model_dir, tok, prompts, precision
):
    model = rambling_int8(tiny_model_dir, precision)
    plain, layered = ModelRunner(model, tok), ModelRunner(model, tok)
    layered._lean.fuse = False
    assert plain._lean._plain is not None  # every layer int8: the plain path exists
    q_calls = count_calls(model.model.layers[0].self_attn.q_proj)
    greedy = GenerationParams(temperature=0, max_output_tokens=24)
    # One and two rows: fewer than dense_rows, the int8 kernel's steps.
    for groups in ([RowGroup(prompts[1], greedy)], [RowGroup(p, greedy) for p in prompts[:2]]):
        expected = [r.token_ids for r in layered.generate(groups)]
        assert q_calls[0] == 1 + 23  # the prefill, then every decode step calls q_proj
        q_calls[0] = 0
        assert [r.token_ids for r in plain.generate(groups)] == expected
        assert q_calls[0] == 1  # the prefill only: the decode steps took the fused product
        q_calls[0] = 0


def test_a_batch_of_dense_rows_calls_the_layers(tiny_model_dir, tok, prompts):
    model = rambling_int8(tiny_model_dir)
    runner = ModelRunner(model, tok)
    assert runner._lean._plain.dense_rows == 4
    q_calls = count_calls(model.model.layers[0].self_attn.q_proj)
    greedy = GenerationParams(temperature=0, max_output_tokens=5)
    runner.generate([RowGroup(prompts[0], greedy, n=4)])
    assert q_calls[0] == 1 + 4  # the prefill and 4 decode steps: bf16 products, layer by layer


def test_steps_with_an_adapter_apply_it_through_the_layers(tiny_model_dir, tok, prompts, tmp_path):
    model = rambling_int8(tiny_model_dir)
    cache = AdapterCache(model)
    cache.ensure("a", make_adapter_bundle(tiny_model_dir, tmp_path / "a", seed=5))
    runner = ModelRunner(model, tok, adapters=cache)
    q_calls = count_calls(model.model.layers[0].self_attn.q_proj)
    greedy = GenerationParams(temperature=0, max_output_tokens=12)
    base = runner.generate([RowGroup(prompts[1], greedy)])[0].token_ids
    assert q_calls[0] == 1  # no adapter: the decode steps took the fused product
    tuned = runner.generate([RowGroup(prompts[1], greedy, adapter_key="a")])[0].token_ids
    assert tuned != base  # the adapter applied in the decode steps too...
    assert q_calls[0] == 1 + 1 + 11
    # A mixed batch calls the layers for both rows: the base row's tokens are still the
    # fused steps' (the adapter row's may drift from its tokens alone after a few: the LoRA
    # products of 2 rows and of 1 round differently, on main's code too).
    mixed = runner.generate(
        [RowGroup(prompts[1], greedy), RowGroup(prompts[1], greedy, adapter_key="a")]
    )
    assert mixed[0].token_ids == base and mixed[1].token_ids[0][:3] == tuned[0][:3]
    # Without the fused path the base row's tokens are the same.
    runner._lean.fuse = False
    assert runner.generate([RowGroup(prompts[1], greedy)])[0].token_ids == base


def test_fused_int4_product_equals_the_separate_layers():
    torch.manual_seed(0)
    layers = [Int4Linear(torch.nn.Linear(64, n, bias=False)) for n in (128, 64, 64)]
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    separate = [m(x) for m in layers]
    fused = Int8Product(layers)
    assert torch.equal(fused(x), torch.cat(separate, dim=-1))
    assert all(torch.equal(m(x), e) for m, e in zip(layers, separate, strict=True))
    base = fused.qweight.untyped_storage().data_ptr()
    assert all(m.qweight.untyped_storage().data_ptr() == base for m in layers)
    # The packed int4 weight holds channels in blocks of 64: a 32-channel member cannot be a
    # view of a fused one, so such siblings stay separate.
    small = [Int4Linear(torch.nn.Linear(64, n, bias=False)) for n in (64, 32)]
    assert Int8Product.of(small) is None
    assert Int8Product.of([Int8Linear(torch.nn.Linear(64, 64)), layers[1]]) is None  # kinds


def test_int4_plain_steps_give_the_tokens_of_the_layer_by_layer_steps(tiny_model_dir, tok, prompts):
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_key_value_heads = 4  # k/v of 64 channels: whole int4 blocks, fused
    torch.manual_seed(2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    model = apply_precision(model, "int4+bf16")
    plain, layered = ModelRunner(model, tok), ModelRunner(model, tok)
    layered._lean.fuse = False
    assert plain._lean._plain is not None
    greedy = GenerationParams(temperature=0, max_output_tokens=24)
    groups = [RowGroup(p, greedy) for p in prompts[:2]]
    expected = [r.token_ids for r in layered.generate(groups)]
    q_calls = count_calls(model.model.layers[0].self_attn.q_proj)
    assert [r.token_ids for r in plain.generate(groups)] == expected
    assert q_calls[0] == 1  # the prefill only

"""Prepacked bf16 linear layers (``tunelab.serving.prepacked``) and where serving uses them: the
packed products equal the plain ``F.linear`` bit for bit, so a prepacked model's greedy tokens
are the unpacked model's."""

import pytest
import torch
import torch.nn.functional as F

from tunelab.data.template import prompt_ids
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.serving import prepacked
from tunelab.serving.generation import GenerationParams
from tunelab.serving.prepacked import PrepackedLinear, prepack_linears
from tunelab.serving.quantize import Int8Linear, apply_precision
from tunelab.serving.runner import ModelRunner, RowGroup

pytestmark = pytest.mark.skipif(not prepacked.available(), reason="no oneDNN in this torch")


@pytest.mark.parametrize("bias", [False, True])
def test_packed_products_equal_f_linear_bit_for_bit(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    layer = PrepackedLinear(linear)
    assert layer.weight is linear.weight  # the same parameters, not a copy
    for rows in (1, 2, 5, 16, 17, 100):
        x = torch.randn(rows, 96).bfloat16()
        assert torch.equal(layer(x), F.linear(x, linear.weight, linear.bias)), rows
    x = torch.randn(3, 1, 96).bfloat16()  # (B, T, in): as a decode step calls it
    assert torch.equal(layer(x), F.linear(x, linear.weight, linear.bias))


def test_repack_follows_a_weight_written_in_place():
    torch.manual_seed(0)
    layer = PrepackedLinear(torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16))
    x = torch.randn(4, 64).bfloat16()
    before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-1)
    assert torch.equal(layer(x), before)  # still the old packed weight
    layer.repack()
    assert torch.equal(layer(x), -before)


def test_products_of_many_rows_multiply_the_plain_weight_bit_for_bit():
    """A prefill's rows: the packed kernel is not always oneDNN's plain-layout one there (96
    rows of a 576 -> 192 product differed in the last bit, and a prefill's greedy text with
    it), so more than PACKED_MAX_ROWS rows take ``F.linear``."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(576, 192, bias=False).to(torch.bfloat16)
    layer = PrepackedLinear(linear)
    for rows in (1, 16, prepacked.PACKED_MAX_ROWS, prepacked.PACKED_MAX_ROWS + 1, 96, 200):
        for _ in range(2):
            x = torch.randn(rows, 576).bfloat16()
            assert torch.equal(layer(x), F.linear(x, linear.weight)), rows


def test_bf16_serving_packs_every_linear_layer_and_keeps_the_head_tied(tiny_model_dir):
    model = apply_precision(load_causal_lm(tiny_model_dir).eval(), "bf16")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, PrepackedLinear) for m in linears)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    plain = apply_precision(load_causal_lm(tiny_model_dir).eval(), "bf16", prepack=False)
    assert not any(isinstance(m, PrepackedLinear) for m in plain.modules())
    assert prepack_linears(load_causal_lm(tiny_model_dir)) == {}  # fp32 layers stay plain


@pytest.mark.parametrize("precision", ["bf16", "int8+bf16"])
def test_prepacked_greedy_tokens_equal_the_unpacked_ones(tiny_model_dir, precision):
    """A batch of 4 prompts (int8+bf16 with ``dense_rows`` 2: its decode steps and prefill
    take the packed bf16 path) and one alone: the same tokens packed or not."""
    tok = load_tokenizer(tiny_model_dir)
    greedy = GenerationParams(temperature=0, max_output_tokens=16)
    questions = ["what colour is the sky?", "name a bird", "two plus two", "hello"]
    answers = _greedy_plain_and_packed(
        tiny_model_dir, tok, questions, greedy, precision, dense_rows=2
    )
    assert answers[0] == answers[1]
    assert sum(len(t) for a in answers[0] for t in a) > 5 * 4


def test_int8_bf16_packs_its_kept_copy_with_the_same_products():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    plain = Int8Linear(linear, keep_dense=True, dense_rows=4)
    packed = Int8Linear(linear, keep_dense=True, dense_rows=4)
    dense = packed.dequantized()
    assert packed.prepack() and packed.packed is not None
    for rows in (1, 3, 4, 16, 70):  # int8 kernel below 4 rows, packed bf16 from 4, plain > 64
        x = torch.randn(rows, 64).bfloat16()
        assert torch.equal(packed(x), plain(x)), rows
    many = torch.randn(8, 64).bfloat16()
    assert torch.equal(packed(many), F.linear(many, dense, packed.bias))
    # Nothing kept to pack (plain int8): nothing packed.
    lean = Int8Linear(linear)
    assert not lean.prepack() and lean.packed is None


@pytest.mark.slow
def test_real_model_prepacked_bf16_tokens_equal_the_unpacked_ones(default_model_dir):
    """The default model, two prompts batched then one alone, greedy: prepacking changes no
    token (int8+bf16's packed copy: the tiny-model test above)."""
    tok = load_tokenizer(default_model_dir)
    greedy = GenerationParams(temperature=0, max_output_tokens=24)
    questions = [
        "Write two sentences about the water cycle.",
        "Route this ticket to billing, technical, account or shipping: my parcel is late.",
    ]
    answers = _greedy_plain_and_packed(default_model_dir, tok, questions, greedy, "bf16")
    assert answers[0] == answers[1]
    assert sum(len(t) for a in answers[0] for t in a) > 3 * 10


def _greedy_plain_and_packed(model_dir, tok, questions, params, precision, **precision_kw):
    """The token ids of ``questions`` batched, then of the first alone, from the model in
    ``precision`` unpacked and prepacked: [plain, packed]."""
    groups = [
        RowGroup(prompt_ids(tok, [{"role": "user", "content": q}]), params) for q in questions
    ]
    answers = []
    for prepack in (False, True):
        model = apply_precision(
            load_causal_lm(model_dir).eval(), precision, prepack=prepack, **precision_kw
        )
        runner = ModelRunner(model, tok)
        answers.append(
            [r.token_ids for r in runner.generate(groups)]
            + [r.token_ids for r in runner.generate(groups[:1])]
        )
    return answers

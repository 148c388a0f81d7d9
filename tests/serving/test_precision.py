"""Serving precisions (``quantize.py``) and the engine's thread choice (``threads.py``)."""

import pytest
import torch
from lora_helpers import make_adapter_bundle

from tunelab.data.template import prompt_ids
from tunelab.models import load_tokenizer
from tunelab.serving.engine import Engine, GenerationRequest
from tunelab.serving.generation import GenerationParams
from tunelab.serving.quantize import Int8Linear, apply_precision
from tunelab.serving.threads import ThreadTuner


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    q = Int8Linear(linear)
    x = torch.randn(3, 5, 64)
    expected = linear(x)
    got = q(x).float()
    assert got.shape == expected.shape
    # Per-channel int8 of a uniform weight plus bf16 activations: ~1% of the output's scale.
    assert (got - expected).abs().max() < 0.03 * expected.abs().max()
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == (48, 64)


def test_apply_precision_converts_every_linear_layer(tiny_model_dir):
    from tunelab.models import load_causal_lm

    model = apply_precision(load_causal_lm(tiny_model_dir), "int8")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        apply_precision(model, "int4")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_adapters_apply_per_row_in_every_precision(tiny_model_dir, tmp_path, precision):
    tok = load_tokenizer(tiny_model_dir)
    bundle = make_adapter_bundle(tiny_model_dir, tmp_path / "a", seed=5)
    prompt = prompt_ids(tok, [{"role": "user", "content": "what colour is the sky?"}])
    params = GenerationParams(temperature=0, max_output_tokens=12)
    with Engine(tiny_model_dir, tok, precision=precision, batch_window_ms=50) as engine:
        base = engine.submit(GenerationRequest(prompt_ids=prompt, params=params))
        tuned = engine.submit(
            GenerationRequest(prompt_ids=prompt, params=params, adapter=("a", bundle))
        )
        base, tuned = base.result(120), tuned.result(120)
        alone = engine.generate(
            GenerationRequest(prompt_ids=prompt, params=params, adapter=("a", bundle)), 120
        )
    assert tuned.token_ids != base.token_ids  # the adapter changes the answer...
    assert alone.token_ids == tuned.token_ids  # ...the same in a mixed batch as alone


def test_engine_refuses_a_thread_count_below_one(tiny_model_dir):
    with pytest.raises(ValueError, match="threads must be at least 1"):
        Engine(tiny_model_dir, load_tokenizer(tiny_model_dir), threads=0)


def test_thread_tuner_keeps_the_faster_count_and_probes_again(monkeypatch):
    applied = []
    monkeypatch.setattr(torch, "set_num_threads", applied.append)
    tuner = ThreadTuner([1, 2], period=10, trial=2)
    cost = {1: 0.01, 2: 0.05}  # a busy machine: two threads are slower

    def run(steps):
        for _ in range(steps):
            tuner.before_step()
            tuner.after_step(cost[applied[-1]] * 4, rows=4)

    run(4)  # the probe: two steps at each count
    assert applied == [1, 2] and tuner.current == 1
    run(6)  # the rest of the period, at one thread
    assert applied == [1, 2, 1]
    cost.update({1: 0.02, 2: 0.01})  # the other work has ended
    run(4 + 1)  # a new probe, then a step at the count it chose
    assert tuner.current == 2 and applied == [1, 2, 1, 2]

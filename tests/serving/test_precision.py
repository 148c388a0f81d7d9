"""Serving precisions (``quantize.py``) and the engine's thread choice (``threads.py``)."""

import json

import pytest
import torch
from lora_helpers import make_adapter_bundle

from tunelab.data.template import prompt_ids
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.serving import precision_choice, quantize
from tunelab.serving.engine import Engine, GenerationRequest
from tunelab.serving.generation import GenerationParams
from tunelab.serving.precision_choice import choose_precision, decide, time_products
from tunelab.serving.quantize import PRECISIONS, Int4Linear, Int8Linear, apply_precision
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


def test_int4_linear_is_close_to_the_float_layer_and_to_its_kept_bf16_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    q = Int4Linear(linear, dense_rows=4)
    x = torch.randn(1, 3, 64)
    expected = linear(x)
    few = q(x[:, :1]).float()  # 1 row: the int4 kernel
    many = q(x).float()  # 3 rows... still the kernel; 4 or more: the kept bf16 weight
    dense = q(x.repeat(1, 2, 1)).float()[:, :3]
    assert q.qweight.dtype == torch.uint8 and q.weight.dtype == torch.bfloat16
    # 16 levels per group of 32 inputs: a few % of the output's scale, and the kernel's
    # product and the kept weight's are the same weights (bf16 rounding apart).
    assert (many - expected).abs().max() < 0.1 * expected.abs().max()
    assert (many - dense).abs().max() < 0.02 * expected.abs().max()
    assert torch.allclose(few, many[:, :1], atol=1e-2)
    with pytest.raises(ValueError, match="multiples of 32"):
        Int4Linear(torch.nn.Linear(48, 64))


def test_int4_precision_keeps_the_output_head_int8(tiny_model_dir):
    model = apply_precision(load_causal_lm(tiny_model_dir), "int4+bf16", prepack=False)
    assert type(model.lm_head) is Int8Linear and model.lm_head.weight.numel()  # int8, kept
    layer = model.model.layers[0]
    assert all(
        type(m) is Int4Linear
        for m in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.mlp.down_proj)
    )


def test_many_rows_use_bf16_products_on_the_dequantized_weight():
    """A decode step of few rows runs the int8 kernel; a prefill of many rows a bf16 matmul on
    the dequantized weight (made per call for int8, kept for int8+bf16): the same weights."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=False)
    lean = Int8Linear(linear, dense_rows=8)
    kept = Int8Linear(linear, keep_dense=True, dense_rows=8)
    assert lean.weight.numel() == 0
    assert kept.weight.shape == (48, 64) and torch.equal(kept.weight, kept.dequantized())
    dense = kept.dequantized()
    few, many = torch.randn(7, 64).bfloat16(), torch.randn(8, 64).bfloat16()
    kernel = torch.ops.aten._weight_int8pack_mm(few, lean.qweight, lean.scales)
    for layer in (lean, kept):
        assert torch.equal(layer(few), kernel)
        assert torch.equal(layer(many), torch.nn.functional.linear(many, dense))
    # Both paths are close to the float layer.
    expected = linear(many.float())
    assert (lean(many).float() - expected).abs().max() < 0.03 * expected.abs().max()
    # The defaults: dequantize only for prefills; with a kept copy, from a few rows.
    assert Int8Linear(linear).dense_rows == quantize.DEQUANTIZE_ROWS
    assert Int8Linear(linear, keep_dense=True).dense_rows == quantize.DENSE_ROWS


def timings(fp32, bf16, int8):
    """Probe timings from per-format seconds at 1, 2, 4, 8 and 16 rows."""
    t = {}
    for fmt, times in (("fp32", fp32), ("bf16", bf16), ("int8", int8)):
        for rows, s in zip(precision_choice.PROBE_ROWS, times, strict=True):
            t[fmt, rows] = s
    return t


def fake_timings(fp32, bf16, int8):
    """A probe (``measure``) answering with these timings, whatever the layer."""
    t = timings(fp32, bf16, int8)
    return lambda *shape: t


@pytest.mark.parametrize(
    ("measured", "expected", "dense_rows"),
    [
        # A Xeon with AMX (figures from quantize.py): int8 for one stream, bf16 from 8 rows.
        (
            ([161, 200, 280, 400, 538], [190] * 5, [83, 111, 170, 280, 500]),
            "int8+bf16",
            8,
        ),
        # int8 faster up to 16 rows: plain int8 (bf16 only for prefills).
        (([161, 200, 280, 400, 538], [190] * 5, [50, 55, 60, 70, 90]), "int8", None),
        # bf16 fast for batches, int8 within noise of bf16 for one row (1.01x): bf16.
        (([161, 200, 280, 400, 538], [150] * 5, [148, 160, 300, 400, 500]), "bf16", None),
        # No fast bf16 (AVX2): fp32, whatever int8 does.
        (([161, 200, 280, 400, 538], [900] * 5, [83, 100, 200, 400, 800]), "fp32", None),
    ],
)
def test_auto_picks_from_the_measured_products(tiny_model_dir, measured, expected, dense_rows):
    from tunelab.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    choice = choose_precision("auto", model, measure=fake_timings(*measured), cache=False)
    assert (choice.precision, choice.dense_rows) == (expected, dense_rows)
    assert (
        "bf16" in choice.reason and "16 rows" in choice.reason and "measured now" in choice.reason
    )


def test_auto_takes_int4_only_for_a_clear_gain_over_int8_at_one_row():
    fp32, bf16 = [161, 200, 280, 400, 538], [190] * 5
    int8 = [139, 160, 200, 280, 500]

    def with_int4(int4):
        t = timings(fp32, bf16, int8)
        t.update({("int4", r): s for r, s in zip(precision_choice.PROBE_ROWS, int4, strict=True)})
        return t

    # Half the bytes streamed, as measured on a Xeon with AMX: int4+bf16, bf16 from 4 rows.
    choice = decide(with_int4([64, 90, 230, 300, 520]))
    assert (choice.precision, choice.dense_rows) == ("int4+bf16", 4)
    assert "int4 " in choice.reason
    # Within noise of int8 (5% faster): int8's weights stay, whichever way the noise fell.
    assert decide(with_int4([132, 150, 230, 300, 520])).precision == "int8+bf16"
    # int4 faster than bf16 even at 16 rows: the bf16 copy still serves prefills.
    assert decide(with_int4([40, 45, 50, 60, 80])).dense_rows == quantize.DEQUANTIZE_ROWS
    # A machine without a bf16 gain for batches stays fp32, int4 or not.
    slow_bf16 = timings(fp32, [900] * 5, int8)
    slow_bf16.update({("int4", r): 10e-6 for r in precision_choice.PROBE_ROWS})
    assert decide(slow_bf16).precision == "fp32"


def test_the_switch_to_bf16_rows_needs_a_clear_margin_so_noise_does_not_move_it():
    """bf16 and int8 within a few percent at 4 rows (noise, run to run): the switch stays at
    8 rows, where bf16 is clearly faster, whichever way the noise fell."""
    fp32 = [161, 200, 280, 400, 538]
    int8 = [83, 111, 190, 280, 500]
    for bf16_at_4 in (185, 190, 195):  # 3% faster, as fast, 3% slower than int8
        choice = decide(timings(fp32, [190, 190, bf16_at_4, 190, 190], int8))
        assert (choice.precision, choice.dense_rows) == ("int8+bf16", 8), bf16_at_4
    # Clearly faster at 4 rows (>= 10%): from 4.
    assert decide(timings(fp32, [190, 190, 170, 190, 190], int8)).dense_rows == 4


def test_auto_measures_once_per_machine_and_reuses_the_timings(tiny_model_dir, tunelab_home):
    """The first ``auto`` measures and caches; later ones (another server, a restart) reuse
    the timings even when a new probe would have come out otherwise."""
    from tunelab.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    calls = []
    first = timings([161, 200, 280, 400, 538], [190] * 5, [83, 111, 170, 180, 500])
    noisy = timings([161, 200, 280, 400, 538], [190] * 5, [83, 111, 230, 280, 500])

    def measure(answer):
        def probe(n_in, n_out):
            calls.append((n_in, n_out))
            return answer

        return probe

    a = choose_precision("auto", model, measure=measure(first))
    b = choose_precision("auto", model, measure=measure(noisy))
    assert len(calls) == 1 and calls[0] == precision_choice.probe_shape(model)
    assert (a.precision, a.dense_rows) == (b.precision, b.dense_rows) == ("int8+bf16", 16)
    path = tunelab_home / precision_choice.CACHE_FILE
    assert "measured now" in a.reason and f"cached in {path}" in b.reason
    # Without the cache (or after deleting the file): measured again.
    c = choose_precision("auto", model, measure=measure(noisy), cache=False)
    assert len(calls) == 2 and c.dense_rows == 4
    path.unlink()
    choose_precision("auto", model, measure=measure(noisy))
    assert len(calls) == 3


def test_a_corrupt_cache_is_measured_over(tiny_model_dir, tunelab_home, caplog):
    from tunelab.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    tunelab_home.mkdir(parents=True, exist_ok=True)
    path = tunelab_home / precision_choice.CACHE_FILE
    key = precision_choice.machine_key(*precision_choice.probe_shape(model))
    for bad in ("not json", json.dumps({key: {"fp32 1": 0.1}})):  # garbage; an entry cut short
        path.write_text(bad)
        measured = fake_timings([161, 200, 280, 400, 538], [900] * 5, [83] * 5)
        assert choose_precision("auto", model, measure=measured).precision == "fp32"
        assert "unreadable" in caplog.text
        caplog.clear()
    assert key in path.read_text()  # rewritten whole


def test_the_real_probe_times_every_format_at_every_row_count():
    t = time_products(64, 96, repeats=2)
    formats = ("fp32", "bf16", "int8", "int4")  # 64 inputs: whole int4 groups
    assert set(t) == {(f, r) for f in formats for r in precision_choice.PROBE_ROWS}
    assert all(s >= 0 for s in t.values())


def test_choose_precision_passes_explicit_choices_and_refuses_unknown(tiny_model_dir):
    from tunelab.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    assert choose_precision("int8", model).precision == "int8"
    assert choose_precision("auto", model).precision in PRECISIONS  # measured for real
    with pytest.raises(ValueError, match="precision must be one of .*auto"):
        choose_precision("int4", model)


def test_apply_precision_converts_every_linear_layer(tiny_model_dir):
    from tunelab.models import load_causal_lm

    model = apply_precision(load_causal_lm(tiny_model_dir), "int8")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        apply_precision(model, "int4")
    both = apply_precision(load_causal_lm(tiny_model_dir), "int8+bf16", dense_rows=3, prepack=False)
    layer = both.model.layers[0].mlp.up_proj
    assert isinstance(layer, Int8Linear) and layer.dense_rows == 3
    assert layer.weight.shape == (layer.out_features, layer.in_features)


@pytest.mark.parametrize("precision", ["bf16", "int8", "int8+bf16", "int4+bf16", "auto"])
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
            tuner.before_step(4)
            tuner.after_step(cost[applied[-1]] * 4, rows=4)

    run(3)  # the probe: two steps at one thread, one at two (5x slower: not tried again)
    assert applied == [1, 2] and tuner.current_for(4) == 1
    run(7)  # the rest of the period, at one thread
    assert applied == [1, 2, 1]
    cost.update({1: 0.02, 2: 0.01})  # the other work has ended
    run(4 + 1)  # a new probe, then a step at the count it chose
    assert tuner.current_for(4) == 2 and applied == [1, 2, 1, 2]


def test_thread_tuner_moves_only_for_a_clear_gain(monkeypatch):
    """Two counts within noise of each other: the probe keeps the count it has (all threads at
    first) instead of following a few percent either way."""
    applied = []
    monkeypatch.setattr(torch, "set_num_threads", applied.append)
    tuner = ThreadTuner([1, 2], period=8, trial=2)
    cost = {1: 0.0544, 2: 0.0576}  # what one probe of the serving bench measured, 16 rows

    def run(steps):
        for _ in range(steps):
            tuner.before_step(16)
            tuner.after_step(cost[applied[-1]], rows=16)

    run(8)
    assert tuner.current_for(16) == 2 and applied[-1] == 2
    cost[1] = 0.04  # now one thread is clearly faster
    run(8)
    assert tuner.current_for(16) == 1


def test_thread_tuner_chooses_for_one_row_apart_from_batches(monkeypatch):
    """A probe run on a batch does not set the single stream's count: one row's products are
    too small to share between threads while a batch's are not."""
    applied = []
    monkeypatch.setattr(torch, "set_num_threads", applied.append)
    tuner = ThreadTuner([1, 2], period=100, trial=2)
    cost = {
        (1, 9): 0.09,
        (2, 9): 0.05,
        (1, 1): 0.02,
        (2, 1): 0.03,
        (2, 12): 0.06,
    }  # seconds per step

    def run(steps, rows):
        for _ in range(steps):
            tuner.before_step(rows)
            tuner.after_step(cost[applied[-1], rows], rows=rows)

    run(4, rows=9)  # a 9-row batch's probe: two threads win
    assert tuner.current_for(9) == 2 and tuner.current_for(16) == 2
    run(4, rows=1)  # the single stream gets its own probe: one thread wins there
    assert tuner.current_for(1) == 1 and tuner.current_for(9) == 2
    run(3, rows=1)
    assert applied[-1] == 1
    run(1, rows=12)  # a batch again: back to its own count, no new probe
    assert applied[-1] == 2

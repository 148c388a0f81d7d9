"""A lean decode step with adapter rows calls the folded LoRA products directly
(``AdapterCache.decode_folds``) instead of through each layer's module: the same operations on
the same packed operands, so the same logits bit for bit; inputs that cannot fold as a whole
(an adapter on some siblings only, a batch of one adapter of many, the int8 kernel's few rows,
fp32) keep the module calls."""

import pytest
import torch
from lora_helpers import make_adapter_bundle

from tunelab.models import load_causal_lm
from tunelab.serving import adapters as adapters_module
from tunelab.serving import prepacked
from tunelab.serving.adapters import AdapterCache, FoldedInput
from tunelab.serving.generation import GenerationParams
from tunelab.serving.quantize import apply_precision
from tunelab.serving.runner import ModelRunner, RowGroup

pytestmark = pytest.mark.skipif(not prepacked.available(), reason="torch without oneDNN")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("lora-direct")
    return [make_adapter_bundle(tiny_model_dir, root / f"d{i}", seed=90 + i) for i in range(3)]


def served(tiny_model_dir, folders, precision, dense_rows=2):
    model = apply_precision(load_causal_lm(tiny_model_dir).eval(), precision, dense_rows=dense_rows)
    cache = AdapterCache(model, max_adapters=len(folders))
    for i, folder in enumerate(folders):
        cache.ensure(f"d{i}", folder)
    return cache


def started(cache, tok, keys) -> ModelRunner:
    """A runner whose batch holds one prefilled row per key."""
    runner = ModelRunner(cache.model, tok, adapters=cache)
    params = GenerationParams(temperature=0, max_output_tokens=8)
    groups = [
        RowGroup(list(range(5 + i, 12 + 2 * i)), params, adapter_key=k) for i, k in enumerate(keys)
    ]
    for g in groups:
        if g.adapter_key is not None:
            cache.pin(g.adapter_key)
    runner.start(groups)
    return runner


def step_logits(runner, folds) -> torch.Tensor:
    """One lean decode step of the runner's batch on a copy of its KV cache."""
    kv = runner._cache
    saved = (kv.k.clone(), kv.v.clone(), kv.length)
    rows = runner.rows
    ids = torch.tensor([[r.next_token] for r in rows])
    positions = torch.tensor([[r.pos] for r in rows])
    mask = torch.cat([runner._mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
    with torch.inference_mode():
        out = runner._lean(ids, positions, mask, kv, adapters=True, folds=folds)
    kv.k, kv.v, kv.length = saved
    return out


@pytest.mark.parametrize("precision", ["bf16", "int8+bf16", "int4+bf16"])
def test_direct_folds_give_the_module_paths_logits_bit_for_bit(
    tiny_model_dir, tok, bundles, precision
):
    cache = served(tiny_model_dir, bundles, precision)
    keys = ["d0", "d2", "d1", None, "d0", "d2"]
    runner = started(cache, tok, keys)
    cache.select(keys)
    lean = runner._lean
    folds = cache.decode_folds(lean.slots, lean.dtype)
    assert folds is not None and len(folds) == len(lean.slots)
    assert all(isinstance(f, FoldedInput) for block in folds for f in block)
    assert cache.decode_folds(lean.slots, lean.dtype) is folds  # kept while the rows stay
    direct = step_logits(runner, folds)
    through_modules = step_logits(runner, None)
    assert torch.equal(direct, through_modules)
    # the adapters change the logits: the fold's products are not the base ones
    cache.select([None] * len(keys))
    base = step_logits(runner, None)
    for b, key in enumerate(keys):
        if key is not None:
            assert (direct[b] - base[b]).abs().max() > 0.05 * base[b].abs().max()
    cache.select(keys[::-1])  # another selection: another plan
    assert cache.decode_folds(lean.slots, lean.dtype) is not folds


def test_runner_steps_take_the_direct_folds_and_generate_the_same_tokens(
    tiny_model_dir, tok, bundles, monkeypatch
):
    cache = served(tiny_model_dir, bundles, "int8+bf16")
    keys = ["d0", "d1", "d2", "d1", None]
    params = GenerationParams(temperature=0, max_output_tokens=6)
    groups = [
        RowGroup(list(range(9 + i, 20 + i)), params, adapter_key=k) for i, k in enumerate(keys)
    ]
    runner = ModelRunner(cache.model, tok, adapters=cache)
    calls = []
    original = FoldedInput.__call__
    monkeypatch.setattr(
        FoldedInput, "__call__", lambda self, x: calls.append(1) or original(self, x)
    )
    direct = [r.token_ids for r in runner.generate(groups)]
    assert calls  # the decode steps called the folded products directly
    monkeypatch.setattr(adapters_module, "DIRECT_FOLDS", False)
    calls.clear()
    assert [r.token_ids for r in runner.generate(groups)] == direct
    assert not calls


def test_inputs_that_cannot_fold_whole_keep_the_module_calls(
    tiny_model_dir, tok, bundles, tmp_path
):
    # q and v only: no group for q/k/v (k has no adapter), each of q and v folds in its module
    partial = make_adapter_bundle(
        tiny_model_dir, tmp_path / "qv", seed=99, targets=["q_proj", "v_proj"]
    )
    cache = served(tiny_model_dir, [partial, bundles[0]], "bf16")
    keys = ["d0", "d1", "d0", "d1"]
    runner = started(cache, tok, keys)
    cache.select(keys)
    lean = runner._lean
    folds = cache.decode_folds(lean.slots, lean.dtype)
    qkv, o, gate_up, down = folds[0]
    assert not isinstance(qkv, FoldedInput)  # q, k, v through their modules
    assert all(isinstance(f, FoldedInput) for f in (o, gate_up, down))
    assert torch.equal(step_logits(runner, folds), step_logits(runner, None))
    # one adapter of three on every layer: under half the columns, no fold at all
    many = served(tiny_model_dir, bundles, "bf16")
    many_runner = started(many, tok, ["d0", "d0"])
    many.select(["d0", "d0"])
    assert many.decode_folds(many_runner._lean.slots, many_runner._lean.dtype) is None
    # fewer rows than the bf16 products start at (int8+bf16): the int8 kernel, no fold
    few = served(tiny_model_dir, bundles, "int8+bf16", dense_rows=4)
    few_runner = started(few, tok, ["d0", "d1", "d2"])
    few.select(["d0", "d1", "d2"])
    assert few.decode_folds(few_runner._lean.slots, few_runner._lean.dtype) is None
    # fp32: nothing is prepacked, nothing folds
    fp32 = served(tiny_model_dir, bundles, "fp32")
    fp32_runner = started(fp32, tok, ["d0", "d1", "d2"])
    fp32.select(["d0", "d1", "d2"])
    assert fp32.decode_folds(fp32_runner._lean.slots, fp32_runner._lean.dtype) is None

"""What the adapter cache converts and packs once instead of per call, and when: the folded
decode steps' packed operands at the first selection of adapter rows after loads or evictions
(not at the first folded step, which then ran 4x its steady cost), the prefills' factors in
the activations' dtype once per load (dropped on eviction), and the masks once per selection
for all the layers of one layout. Results bit-equal to converting at each call."""

import pytest
import torch
from lora_helpers import make_adapter_bundle

from tunelab.models import load_causal_lm
from tunelab.serving import adapters as adapters_module
from tunelab.serving import prepacked
from tunelab.serving.adapters import AdapterCache, _add_lora
from tunelab.serving.quantize import apply_precision

LAYER = "model.layers.1.mlp.down_proj"  # a layer without siblings
Q = "model.layers.{}.self_attn.q_proj"  # grouped with k and v


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("lora-prepared")
    return [make_adapter_bundle(tiny_model_dir, root / f"p{i}", seed=80 + i) for i in range(3)]


def bf16_cache(tiny_model_dir, bundles) -> AdapterCache:
    cache = AdapterCache(apply_precision(load_causal_lm(tiny_model_dir).eval(), "bf16"))
    for i, folder in enumerate(bundles):
        cache.ensure(f"p{i}", folder)
    return cache


def run(cache: AdapterCache, keys: list, ids: torch.Tensor) -> torch.Tensor:
    cache.select(keys)
    with torch.inference_mode():
        return cache.model(input_ids=ids).logits


@pytest.mark.skipif(not prepacked.available(), reason="torch without oneDNN")
def test_loads_pack_the_folded_operands_at_the_next_selection_once(
    tiny_model_dir, bundles, tmp_path
):
    """After loads nothing is packed until rows with adapters are selected; then every layer's
    ``[W | B_cat]`` and A factors are packed at once, even for a batch that does not fold
    (one adapter of three), and the folded steps after it use them without packing again.
    An eviction drops them; the next selection packs the adapters loaded then."""
    cache = bf16_cache(tiny_model_dir, bundles)
    layers = list(cache._layers.values())
    assert all(layer.foldable for layer in layers)
    assert all(layer.module.lora_packed is None for layer in layers)
    cache.select(["p0"])
    packed = {id(layer): layer.module.lora_packed for layer in layers}
    assert all(p is not None for p in packed.values())
    assert all((layer.group or layer)._packed_A is not None for layer in layers)
    group_a = cache._layers[Q.format(0)].group._packed_A
    ids = torch.randint(0, 1000, (3, 1), generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # folded decode steps
        run(cache, ["p0", "p1", "p2"], ids)
    assert all(layer.module.lora_packed is packed[id(layer)] for layer in layers)
    assert cache._layers[Q.format(0)].group._packed_A is group_a
    cache.evict("p0")
    assert all(layer.module.lora_packed is None for layer in layers)
    run(cache, [None, None], ids[:2])  # base rows only: nothing to pack for
    assert all(layer.module.lora_packed is None for layer in layers)
    cache.ensure("q", make_adapter_bundle(tiny_model_dir, tmp_path / "q", seed=90))
    cache.select(["q", None])
    assert all(layer.module.lora_packed is not None for layer in layers)
    assert cache._layers[Q.format(0)].group._packed_A is not group_a


def test_prefill_factors_are_converted_once_per_load_and_dropped_on_eviction(
    tiny_model_dir, bundles, monkeypatch
):
    """A bf16 prefill that does not fold (``FOLD_PREFILL`` off; layers not prepacked) converts
    a layer's fp32 factors to bf16 at its first call and reuses them at the next prefills;
    evicting an adapter drops them, and the next prefill converts the factors loaded then (the
    evicted adapter's columns are gone)."""
    monkeypatch.setattr(adapters_module, "FOLD_PREFILL", False)
    cache = bf16_cache(tiny_model_dir, bundles)
    layer = cache._layers[LAYER]
    rows = adapters_module.MANY_ROWS
    ids = torch.randint(0, 1000, (2, rows), generator=torch.Generator().manual_seed(2))
    assert layer._low is None
    first = run(cache, ["p0", "p2"], ids)
    dtype, At, Bt = layer._low
    assert dtype == torch.bfloat16 and At.shape == layer.At.shape and Bt.shape == layer.Bt.shape
    torch.testing.assert_close(At.float(), layer.At, rtol=1e-2, atol=1e-3)
    again = run(cache, ["p1", "p0"], ids)
    assert layer._low[1] is At and layer._low[2] is Bt  # not converted again
    assert not torch.equal(first, again)  # other adapters' rows: other outputs
    assert torch.equal(run(cache, ["p0", "p2"], ids), first)
    cache.evict("p1")
    assert layer._low is None
    run(cache, ["p0", "p2"], ids)
    assert layer._low[1].shape == layer.At.shape == (At.shape[0], At.shape[1] - 8)


@pytest.mark.parametrize("keys", [["p0", "p2", None], ["p1", "p1", "p1"], ["p2", "p0", "p1"]])
def test_prefill_with_cached_factors_is_bit_equal_to_converting_each_call(
    tiny_model_dir, bundles, keys, monkeypatch
):
    """One layer, a prefill's rows, unfolded (``FOLD_PREFILL`` off): the LoRA term from the
    cached bf16 factors (sliced to the batch's columns) and masks equals, bit for bit, the old
    per-call conversion of the batch's columns of the fp32 factors."""
    monkeypatch.setattr(adapters_module, "FOLD_PREFILL", False)
    cache = bf16_cache(tiny_model_dir, bundles)
    module, layer = cache._modules[LAYER], cache._layers[LAYER]
    torch.manual_seed(3)
    x = torch.randn(len(keys), adapters_module.MANY_ROWS, module.in_features).bfloat16()
    with torch.inference_mode():
        cache.select(None)
        base = module(x)
        cache.select(keys)
        got = module(x)
        lo, hi, mask = cache._plan_for(layer.layout)
        want = base.clone()
        low = torch.bfloat16
        At, Bt = layer.At[:, lo:hi].to(low), layer.Bt[lo:hi].to(low)
        _add_lora(x, want.view(-1, want.shape[-1]), At, Bt, mask.to(low))
    assert torch.equal(got, want)
    assert not torch.equal(got, base)


@pytest.mark.skipif(not prepacked.available(), reason="torch without oneDNN")
def test_groups_and_layers_of_one_layout_share_one_mask_per_selection(tiny_model_dir, bundles):
    """Every block's q/k/v group holds the same adapters in the same layout: a decode step
    builds their mask once (not once per block), and a new selection builds a new one."""
    cache = bf16_cache(tiny_model_dir, bundles)
    blocks = len(cache.model.model.layers)
    assert blocks > 1
    ids = torch.randint(0, 1000, (3, 1), generator=torch.Generator().manual_seed(4))
    run(cache, ["p0", "p1", "p2"], ids)
    masks = {id(cache._layers[Q.format(i)].group._mask[1]) for i in range(blocks)}
    assert len(masks) == 1
    first = cache._layers[Q.format(0)].group._mask[1]
    assert first.mask.shape == (3, 1, cache._layers[Q.format(0)].group.A.shape[1])
    run(cache, ["p2", "p1", "p0"], ids)
    second = cache._layers[Q.format(0)].group._mask[1]
    assert second is not first and not torch.equal(second.mask, first.mask)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_layers_take_torchs_call_path_without_hooks(tiny_model_dir, bundles, precision):
    """The adapter cache routes a layer's calls through its own ``forward`` (no forward hooks,
    whose call path costs more per call): rows without adapter get the class's forward
    exactly, rows with one get the LoRA term added, and a base-only batch is the bare base."""
    model = apply_precision(load_causal_lm(tiny_model_dir).eval(), precision)
    cache = AdapterCache(model)
    cache.ensure("p0", bundles[0])
    module = cache._modules[LAYER]
    assert not module._forward_hooks and not module._forward_pre_hooks
    torch.manual_seed(5)
    dtype = module.weight.dtype
    x = torch.randn(3, 1, module.in_features).to(dtype)
    with torch.inference_mode():
        plain = type(module).forward(module, x)
        cache.select(None)
        assert torch.equal(module(x), plain)
        cache.select(["p0", None, "p0"])
        mixed = module(x)
    if precision == "fp32":  # added after the product: the row without adapter is exact
        assert torch.equal(mixed[1], plain[1])
    else:  # folded: [x | 0] times [W | B], up to the longer product's rounding
        torch.testing.assert_close(mixed[1], plain[1], rtol=0, atol=0.02)
    for b in (0, 2):
        assert (mixed[b] - plain[b]).abs().max() > 0.05 * plain[b].abs().max()

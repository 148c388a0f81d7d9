"""Decode steps of a prepacked bf16 layer (``bf16``, and ``int8+bf16`` from its dense rows) fold
the LoRA B product into the base product: ``[x | h] [W | B_cat]^T`` in one oneDNN product, with
A, h and B in bf16 (h by a oneDNN product on A packed once). Each row still gets its own adapter's output: within a small bound of
the fp32 factors' LoRA term at one layer, and of PEFT's fp32 logits (as the unfolded path),
through loads, evictions and batches that change."""

import pytest
import torch
from lora_helpers import make_adapter_bundle
from test_adapter_cache import peft_logits

from tunelab.models import load_causal_lm
from tunelab.serving import adapters as adapters_module
from tunelab.serving import prepacked
from tunelab.serving.adapters import AdapterCache
from tunelab.serving.quantize import apply_precision

pytestmark = pytest.mark.skipif(not prepacked.available(), reason="torch without oneDNN")

LAYER = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("lora-fold")
    return [make_adapter_bundle(tiny_model_dir, root / f"f{i}", seed=60 + i) for i in range(3)]


def served(tiny_model_dir, bundles, precision):
    model = apply_precision(load_causal_lm(tiny_model_dir).eval(), precision, dense_rows=2)
    cache = AdapterCache(model, max_adapters=3)
    for i, folder in enumerate(bundles):
        cache.ensure(f"f{i}", folder)
    return cache


def input_widths(layer) -> list[int]:
    """The width of each input the layer's module multiplies from now on: wider than its
    features where the LoRA fold made it ``[x | h]``."""
    widths: list[int] = []
    base_forward = layer._base_forward

    def recorded(module, x):
        widths.append(x.shape[-1])
        return base_forward(module, x)

    layer._base_forward = recorded
    return widths


def logits(cache, keys, ids):
    cache.select(keys)
    with torch.inference_mode():
        return cache.model(input_ids=ids).logits.float()


@pytest.mark.parametrize("precision", ["bf16", "int8+bf16"])
def test_folded_layer_is_the_fp32_lora_term_within_bf16_rounding(
    tiny_model_dir, bundles, precision
):
    """One layer, a decode step's input: the folded output minus the base output equals the
    LoRA term computed in fp32 from the fp32 factors, up to 2% of its size (bf16 keeps 8 bits
    of mantissa: the rounding of A, h and B is ~0.4% each, accumulated in fp32)."""
    cache = served(tiny_model_dir, bundles, precision)
    module = cache._modules[LAYER]
    layer = cache._layers[LAYER]
    assert layer.foldable
    keys = ["f0", "f1", "f2", "f1", None, "f0"]
    torch.manual_seed(3)
    x = torch.randn(len(keys), 1, module.in_features).to(torch.bfloat16)
    cache.select(None)
    with torch.inference_mode():
        base = module(x).float()
        cache.select(keys)
        folded = module(x).float()
    assert module.lora_packed is not None and layer._packed_A is not None  # the fold ran
    expected = torch.zeros_like(base)
    for b, key in enumerate(keys):
        if key is not None:
            f = layer.factors[key]
            expected[b] = f.scale * (x[b].float() @ f.A.t() @ f.B.t())
    term = folded - base
    assert term[4].abs().max() == 0  # the row without adapter: exactly the base output
    assert (term - expected).abs().max() < 0.02 * expected.abs().max()
    assert expected.abs().max() > 0.05 * base.abs().max()  # a term that matters


@pytest.mark.parametrize("precision", ["bf16", "int8+bf16"])
def test_folded_decode_matches_each_adapter_alone_and_peft(tiny_model_dir, bundles, precision):
    """A decode step over mixed rows, folded, against the same step unfolded (fp32 B products)
    and PEFT's fp32 logits: the difference stays several times under the adapter's effect."""
    cache = served(tiny_model_dir, bundles, precision)
    keys = ["f0", "f2", "f1", None, "f0", "f2"]
    torch.manual_seed(4)
    ids = torch.randint(0, 1000, (len(keys), 1))
    folded = logits(cache, keys, ids)
    assert all(layer.module.lora_packed is not None for layer in cache._layers.values())
    for layer in cache._layers.values():
        layer.foldable = False
    unfolded = logits(cache, keys, ids)
    bases = logits(cache, [None] * len(keys), ids)  # the same rows: the same kernels
    for b, key in enumerate(keys):
        row, base = ids[b : b + 1], bases[b]
        if key is None:  # a zero h: the base output, up to the longer product's rounding
            torch.testing.assert_close(folded[b], base, rtol=0, atol=0.02)
            continue
        effect = (unfolded[b] - base).abs().max()
        assert (folded[b] - unfolded[b]).abs().max() < effect / 5
        reference = peft_logits(tiny_model_dir, bundles[int(key[1])], row)[0]
        assert (folded[b] - reference).abs().max() < effect / 3


def test_eviction_repacks_with_the_adapters_loaded_now(tiny_model_dir, bundles, tmp_path):
    """An eviction drops the packed ``[W | B_cat]`` (its columns are gone); the next folded step
    packs the adapters loaded then, and a new adapter's rows get its own output."""
    cache = served(tiny_model_dir, bundles, "bf16")
    ids = torch.randint(0, 1000, (4, 1), generator=torch.Generator().manual_seed(5))
    logits(cache, ["f0", "f1", "f2", "f0"], ids)
    module = cache._modules[LAYER]
    old = module.lora_packed
    assert old is not None
    fresh = make_adapter_bundle(tiny_model_dir, tmp_path / "g", seed=70)
    cache.ensure("g", fresh)  # evicts f0, the least recently used
    assert "f0" not in cache and module.lora_packed is None
    keys = ["g", "f1", "f2", "g"]
    folded = logits(cache, keys, ids)
    assert module.lora_packed is not None and module.lora_packed is not old
    for b in (0, 3):
        row = ids[b : b + 1]
        effect = peft_logits(tiny_model_dir, fresh, row) - peft_logits(tiny_model_dir, None, row)
        reference = peft_logits(tiny_model_dir, fresh, row)[0]
        assert (folded[b] - reference).abs().max() < effect.abs().max() / 3


def test_no_fold_for_plain_bf16_layers_one_adapter_of_many_or_prefills_when_off(
    tiny_model_dir, bundles, monkeypatch
):
    """Not folded: a batch whose adapters span under half of the layer's columns (the fold
    would multiply every loaded adapter's B), a bf16 model whose layers are not prepacked, and
    a prefill with ``FOLD_PREFILL`` off (plain weight, masked bf16 products after it). Folded:
    a decode step spanning the adapters, and a prefill of at least MANY_ROWS tokens."""
    cache = served(tiny_model_dir, bundles, "bf16")
    module = cache._modules[LAYER]
    widths = input_widths(cache._layers[LAYER])
    width = adapters_module.MANY_ROWS // 2
    prefill = torch.randint(0, 1000, (2, width))
    monkeypatch.setattr(adapters_module, "FOLD_PREFILL", False)
    logits(cache, ["f0", "f1"], prefill)
    logits(cache, ["f1"], torch.randint(0, 1000, (1, 1)))
    assert widths == [module.in_features] * 2  # the plain input both times: no [x | h]
    logits(cache, ["f0", "f1"], torch.randint(0, 1000, (2, 1)))
    assert widths[-1] > module.in_features  # a decode step spanning the adapters folds
    monkeypatch.setattr(adapters_module, "FOLD_PREFILL", True)
    logits(cache, ["f0", "f1"], prefill)
    assert widths[-1] > module.in_features  # and a prefill, now
    plain = AdapterCache(load_causal_lm(tiny_model_dir).to(torch.bfloat16), max_adapters=3)
    plain.ensure("f0", bundles[0])
    assert not any(layer.foldable for layer in plain._layers.values())


@pytest.mark.parametrize("precision", ["bf16", "int8+bf16"])
def test_folded_prefill_matches_the_unfolded_one_and_peft(
    tiny_model_dir, bundles, precision, monkeypatch
):
    """A prefill of mixed rows (more than MANY_ROWS tokens), folded into the packed
    ``[W | B_cat]`` products, against the same prefill unfolded (base product on the plain
    weight, bf16 LoRA products added after it) and PEFT's fp32 logits: each row with an
    adapter within a fraction of the adapter's own effect; the row without one is the base
    output up to the packed, longer product's rounding."""
    cache = served(tiny_model_dir, bundles, precision)
    keys = ["f0", "f2", "f1", None, "f0", "f2"]
    ids = torch.randint(0, 1000, (len(keys), 16), generator=torch.Generator().manual_seed(6))
    assert ids.numel() >= adapters_module.MANY_ROWS
    widths = input_widths(cache._layers[LAYER])
    folded = logits(cache, keys, ids)[:, -1]
    assert widths[-1] > cache._modules[LAYER].in_features  # the prefill folded
    monkeypatch.setattr(adapters_module, "FOLD_PREFILL", False)
    unfolded = logits(cache, keys, ids)[:, -1]
    bases = logits(cache, [None] * len(keys), ids)[:, -1]
    for b, key in enumerate(keys):
        if key is None:
            torch.testing.assert_close(folded[b], bases[b], rtol=0, atol=0.05)
            continue
        effect = (unfolded[b] - bases[b]).abs().max()
        assert (folded[b] - unfolded[b]).abs().max() < effect / 5
        reference = peft_logits(tiny_model_dir, bundles[int(key[1])], ids[b : b + 1])[0, -1]
        assert (folded[b] - reference).abs().max() < effect / 3

"""Sibling layers called on one input (q/k/v, gate/up) share one A tensor and one A product per
decode step: each row still gets exactly its own adapter's output (PEFT's, adapter alone), with
rows without adapter, every adapter, different ranks per layer; a batch that does not span
every adapter, an adapter that targets only some siblings, a sibling called on another tensor
and loads/evictions all keep the right products."""

import pytest
import torch
from lora_helpers import make_adapter_bundle
from test_adapter_cache import peft_logits

from tunelab.models import load_causal_lm
from tunelab.serving.adapters import AdapterCache, _SharedInput

torch.manual_seed(7)
IDS = torch.randint(0, 1000, (6, 3))
ATTN = "model.layers.0.self_attn"
MLP = "model.layers.1.mlp"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("lora-shared")
    ranks = {"q_proj": 2, "v_proj": 6, "up_proj": 4}  # siblings of different ranks
    return {
        "a": make_adapter_bundle(tiny_model_dir, root / "a", seed=11),
        "b": make_adapter_bundle(tiny_model_dir, root / "b", seed=12, rank_pattern=ranks),
        "c": make_adapter_bundle(tiny_model_dir, root / "c", seed=13, rank=4),
    }


@pytest.fixture(scope="module")
def q_only(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("lora-shared-q")
    return make_adapter_bundle(tiny_model_dir, root / "q", seed=14, targets=["q_proj"])


@pytest.fixture(scope="module")
def references(tiny_model_dir, bundles):
    folders = dict(bundles) | {None: None}
    return {key: peft_logits(tiny_model_dir, folder, IDS) for key, folder in folders.items()}


def cache_of(tiny_model_dir, folders: dict) -> AdapterCache:
    cache = AdapterCache(load_causal_lm(tiny_model_dir), max_adapters=4)
    for key, folder in folders.items():
        cache.ensure(key, folder)
    return cache


def group_of(cache: AdapterCache, parent: str, leaf: str) -> _SharedInput | None:
    return cache._layers[f"{parent}.{leaf}"].group


def run(cache: AdapterCache, keys: list, ids: torch.Tensor) -> torch.Tensor:
    cache.select(keys)
    with torch.inference_mode():
        return cache.model(input_ids=ids).logits


def assert_rows(mixed, keys, references, tokens):
    for b, key in enumerate(keys):
        want = references[key][b, :tokens]
        torch.testing.assert_close(mixed[b], want, rtol=1e-4, atol=1e-4)


def test_siblings_hold_their_a_factors_in_one_tensor(tiny_model_dir, bundles):
    cache = cache_of(tiny_model_dir, bundles)
    group = group_of(cache, ATTN, "q_proj")
    assert group is not None and group is group_of(cache, ATTN, "v_proj")
    assert group_of(cache, MLP, "gate_proj") is group_of(cache, MLP, "up_proj") is not None
    assert group_of(cache, ATTN, "o_proj") is None and group_of(cache, MLP, "down_proj") is None
    start, end = group.A.data_ptr(), group.A.data_ptr() + group.A.nbytes
    for leaf in ("q_proj", "k_proj", "v_proj"):
        layer = cache._layers[f"{ATTN}.{leaf}"]
        assert start <= layer.At.data_ptr() < end  # a view: the weights are held once
        for f in layer.factors.values():
            assert start <= f.A.data_ptr() < end
    widths = [
        cache._layers[f"{ATTN}.{leaf}"].At.shape[1] for leaf in ("q_proj", "k_proj", "v_proj")
    ]
    assert widths == [8 + 2 + 4, 8 + 8 + 4, 8 + 6 + 4] and group.A.shape[1] == sum(widths)


@pytest.mark.parametrize(
    "keys",
    [["a", "b", "c", "a", "b", "c"], ["c", None, "a", "b", None, "a"]],
    ids=["every-adapter", "with-base-rows"],
)
def test_shared_product_rows_match_peft_per_adapter(tiny_model_dir, bundles, references, keys):
    cache = cache_of(tiny_model_dir, bundles)
    group = group_of(cache, ATTN, "q_proj")
    mixed = run(cache, keys, IDS[:, :1])  # a decode step
    assert group._last is not None and group._last[2].shape == (6, 1, group.A.shape[1])
    assert_rows(mixed, keys, references, 1)
    mixed = run(cache, keys, IDS)  # a short prefill: 3 tokens a row, under MANY_ROWS
    assert_rows(mixed, keys, references, 3)


def test_a_batch_not_spanning_the_adapters_multiplies_its_own_columns(
    tiny_model_dir, bundles, references
):
    """Rows of the middle adapter only: the shared product would multiply every adapter's
    columns, so each layer multiplies its own used ones."""
    cache = cache_of(tiny_model_dir, bundles)
    keys = ["b", None, "b", "b", None, "b"]
    mixed = run(cache, keys, IDS[:, :1])
    assert group_of(cache, ATTN, "q_proj")._last is None  # never used
    assert_rows(mixed, keys, references, 1)


def test_a_batch_spanning_most_adapters_shares_the_product_with_the_rest_masked(
    tiny_model_dir, bundles, references
):
    """Rows of a and b, c loaded but unused: the shared product covers c's columns too (masked
    to 0) and each layer's B product takes only a's and b's."""
    cache = cache_of(tiny_model_dir, bundles)
    keys = ["b", "a", None, "a", "b", "b"]
    mixed = run(cache, keys, IDS[:, :1])
    group = group_of(cache, ATTN, "q_proj")
    assert group._last is not None
    k_at, k_width = cache._layers[f"{ATTN}.k_proj"].group_cols
    c_cols = group._last[2][:, :, k_at + k_width - 4 : k_at + k_width]  # c's rank-4 block of k
    assert c_cols.abs().max() == 0
    assert_rows(mixed, keys, references, 1)


def test_a_sibling_called_on_another_tensor_computes_its_own(tiny_model_dir, bundles):
    """The shared product is reused only for the very tensor it was computed on."""
    cache = cache_of(tiny_model_dir, bundles)
    q = cache.model.get_submodule(f"{ATTN}.q_proj")
    k = cache.model.get_submodule(f"{ATTN}.k_proj")
    cache.select(["a", "c", "b"])
    x1, x2 = torch.randn(3, 1, q.in_features), torch.randn(3, 1, q.in_features)
    with torch.inference_mode():
        q(x1)
        shared = k(x2)  # after q's product on x1
        k(x1)  # the shared product for x1
        group = group_of(cache, ATTN, "k_proj")
        for m in group.members:
            m.group = None
        alone = k(x2)  # no group at all: the masked per-layer products
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-5)


def test_an_adapter_on_some_siblings_ungroups_them_until_evicted(
    tiny_model_dir, bundles, q_only, references
):
    cache = cache_of(tiny_model_dir, {"a": bundles["a"], "c": bundles["c"]})
    assert group_of(cache, ATTN, "q_proj") is not None
    cache.ensure("q", q_only)  # q_proj holds a, c, q; k_proj and v_proj a, c
    assert group_of(cache, ATTN, "q_proj") is None and group_of(cache, ATTN, "k_proj") is None
    assert group_of(cache, MLP, "gate_proj") is not None  # untouched by the q-only adapter
    keys = ["a", "q", "c", None, "q", "a"]
    mixed = run(cache, keys, IDS[:, :1])
    q_alone = peft_logits(tiny_model_dir, q_only, IDS[:, :1])
    for b, key in enumerate(keys):
        want = q_alone[b] if key == "q" else references[key][b, :1]
        torch.testing.assert_close(mixed[b], want, rtol=1e-4, atol=1e-4)
    cache.evict("q")
    assert group_of(cache, ATTN, "q_proj") is not None
    keys = ["a", "c", None, "c", "a", "a"]
    assert_rows(run(cache, keys, IDS[:, :1]), keys, references, 1)


def test_evictions_and_loads_regroup_and_keep_each_rows_output(tiny_model_dir, bundles, references):
    cache = cache_of(tiny_model_dir, bundles)
    keys = ["c", "a", "b", "a", None, "c"]
    before = run(cache, keys, IDS[:, :1])
    old = group_of(cache, ATTN, "q_proj")
    cache.evict("a")  # b and c move left
    cache.ensure("a", bundles["a"])  # a comes back last
    new = group_of(cache, ATTN, "q_proj")
    assert new is not None and new is not old
    assert [k for k, _, _ in cache._layers[f"{ATTN}.k_proj"].layout] == ["b", "c", "a"]
    after = run(cache, keys, IDS[:, :1])
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert_rows(after, keys, references, 1)

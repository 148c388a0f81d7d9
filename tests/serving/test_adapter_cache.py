"""The adapter cache: mixed-batch LoRA equals PEFT's forward per adapter, LRU eviction within
the bounds, pinned adapters kept, and adapters it cannot serve refused by name."""

import json

import pytest
import torch
from lora_helpers import make_adapter_bundle, rehash
from peft import PeftModel

from tunelab.models import load_causal_lm
from tunelab.serving.adapters import (
    AdapterCache,
    AdapterCacheFull,
    AdapterError,
    check_adapter_folder,
)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter_bundle(tiny_model_dir, root / f"a{i}", seed=i) for i in range(3)]


def peft_logits(base_dir, adapter, ids):
    model = load_causal_lm(base_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("order", ["grouped", "interleaved"])
def test_mixed_batch_matches_peft_per_adapter(tiny_model_dir, bundles, order):
    """Rows for three adapters and the base model in one forward: each row's logits are those
    of PEFT with that row's adapter alone, for a prefill (many tokens per row) and a decode
    step (one token per row)."""
    keys = ["a0", "a0", "a1", None, "a2", "a2"]
    if order == "interleaved":
        keys = ["a0", "a1", "a2", None, "a0", "a2"]
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (len(keys), 7))
    cache = AdapterCache(load_causal_lm(tiny_model_dir), max_adapters=3)
    for i, folder in enumerate(bundles):
        cache.ensure(f"a{i}", folder)
    folders = {f"a{i}": f for i, f in enumerate(bundles)} | {None: None}
    for tokens in (ids, ids[:, :1]):
        cache.select(keys)
        with torch.inference_mode():
            mixed = cache.model(input_ids=tokens).logits
        for b, key in enumerate(keys):
            alone = peft_logits(tiny_model_dir, folders[key], tokens[b : b + 1])[0]
            torch.testing.assert_close(mixed[b], alone, rtol=1e-4, atol=1e-4)
    # With no adapter selected the model is the bare base model, bit for bit.
    cache.select(None)
    with torch.inference_mode():
        bare = cache.model(input_ids=ids).logits
    assert torch.equal(bare, peft_logits(tiny_model_dir, None, ids))


def test_rank_and_alpha_patterns_and_rslora_match_peft(tmp_path, tiny_model_dir):
    folder = make_adapter_bundle(
        tiny_model_dir,
        tmp_path / "patterned",
        seed=5,
        rank=4,
        use_rslora=True,
        rank_pattern={"q_proj": 2, "down_proj": 6},
        alpha_pattern={"v_proj": 3},
    )
    ids = torch.randint(0, 1000, (2, 5))
    cache = AdapterCache(load_causal_lm(tiny_model_dir))
    cache.ensure("p", folder)
    cache.select(["p", "p"])
    with torch.inference_mode():
        ours = cache.model(input_ids=ids).logits
    torch.testing.assert_close(ours, peft_logits(tiny_model_dir, folder, ids), rtol=1e-4, atol=1e-4)


def test_least_recently_used_is_evicted_first(tiny_model_dir, bundles):
    cache = AdapterCache(load_causal_lm(tiny_model_dir), max_adapters=2)
    cache.ensure("a0", bundles[0])
    cache.ensure("a1", bundles[1])
    cache.ensure("a0", bundles[0])  # a0 used again: a1 is now the least recent
    cache.ensure("a2", bundles[2])
    assert cache.keys == ["a0", "a2"]
    assert (cache.loads, cache.evictions) == (3, 1)
    with pytest.raises(KeyError):
        cache.select(["a1"])


def test_pinned_adapters_are_never_evicted(tiny_model_dir, bundles):
    cache = AdapterCache(load_causal_lm(tiny_model_dir), max_adapters=2)
    cache.ensure("a0", bundles[0])
    cache.ensure("a1", bundles[1])
    cache.pin("a0")
    cache.pin("a1")
    with pytest.raises(AdapterCacheFull):
        cache.ensure("a2", bundles[2])
    assert cache.keys == ["a0", "a1"]
    cache.unpin("a1")
    cache.ensure("a2", bundles[2])  # a0 is older but pinned: a1 goes
    assert cache.keys == ["a0", "a2"]
    with pytest.raises(RuntimeError, match="in use"):
        cache.evict("a0")


def test_byte_bound(tiny_model_dir, bundles):
    probe = AdapterCache(load_causal_lm(tiny_model_dir))
    probe.ensure("a0", bundles[0])
    one = probe.nbytes
    assert one > 0
    cache = AdapterCache(load_causal_lm(tiny_model_dir), max_adapters=8, max_bytes=int(1.5 * one))
    cache.ensure("a0", bundles[0])
    cache.ensure("a1", bundles[1])
    assert cache.keys == ["a1"] and cache.nbytes == one
    tight = AdapterCache(load_causal_lm(tiny_model_dir), max_bytes=one // 2)
    with pytest.raises(AdapterError, match="more than the engine's bound"):
        tight.ensure("a0", bundles[0])


def test_evicted_adapter_leaves_no_trace(tiny_model_dir, bundles):
    """After loading and evicting adapters, the survivors still compute what PEFT computes."""
    ids = torch.randint(0, 1000, (1, 6))
    cache = AdapterCache(load_causal_lm(tiny_model_dir), max_adapters=1)
    for i in (0, 1, 2, 1):
        cache.ensure(f"a{i}", bundles[i])
    cache.select(["a1"])
    with torch.inference_mode():
        ours = cache.model(input_ids=ids).logits
    torch.testing.assert_close(
        ours, peft_logits(tiny_model_dir, bundles[1], ids), rtol=1e-4, atol=1e-4
    )


def test_adapter_of_another_base_model_is_refused(tmp_path, tiny_model_dir, default_model_dir):
    folder = make_adapter_bundle(
        tiny_model_dir, tmp_path / "other", seed=0, base_model="org/other-model"
    )
    with pytest.raises(AdapterError, match="tuned from base model 'org/other-model'"):
        check_adapter_folder(folder, tiny_model_dir)
    # The same folder naming this engine's base, by reference or by path, is accepted.
    tuning = {"base_model": "my-base"}
    (folder / "tuning_config.json").write_text(json.dumps(tuning))
    with pytest.raises(AdapterError, match="tuning_config.json .*does not match its manifest"):
        check_adapter_folder(folder, tiny_model_dir, base_ref="my-base")
    rehash(folder)
    check_adapter_folder(folder, tiny_model_dir, base_ref="my-base")
    with pytest.raises(AdapterError):
        check_adapter_folder(folder, default_model_dir, base_ref="smollm2-135m-instruct")
    # A plain PEFT folder (no manifest to check its files against) is not served.
    (folder / "tuning_config.json").unlink()
    (folder / "manifest.json").unlink()
    with pytest.raises(AdapterError, match="no manifest.json"):
        check_adapter_folder(folder, tiny_model_dir)


def test_folders_that_are_not_servable_adapters_are_refused(tmp_path, tiny_model_dir, bundles):
    with pytest.raises(AdapterError, match="does not exist"):
        check_adapter_folder(tmp_path / "missing", tiny_model_dir)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text("{}")
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterError, match="only safetensors are accepted"):
        check_adapter_folder(pickled, tiny_model_dir)

    dora = make_adapter_bundle(tiny_model_dir, tmp_path / "dora", seed=1)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    rehash(dora)
    cache = AdapterCache(load_causal_lm(tiny_model_dir))
    with pytest.raises(AdapterError, match="DoRA"):
        cache.ensure("dora", dora)

    from safetensors.torch import save_file

    wrong = make_adapter_bundle(tiny_model_dir, tmp_path / "wrong", seed=2)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file(
        {key: torch.zeros(8, 32), key.replace("lora_A", "lora_B"): torch.zeros(64, 8)},
        wrong / "adapter_model.safetensors",
    )
    rehash(wrong)
    with pytest.raises(AdapterError, match="does not fit"):
        cache.ensure("wrong", wrong)
    assert len(cache) == 0


def test_adapters_on_different_targets_mix_in_one_decode_step(tmp_path, tiny_model_dir):
    """Adapters on different subsets of the layers (q and v only; all; k, up and down), several
    in one batch with the base model: a layer's mask covers only the rows whose adapter
    targets it, and every row's logits stay PEFT's with that row's adapter alone."""
    specs = {"qv": ["q_proj", "v_proj"], "all": None, "k-up": ["k_proj", "up_proj", "down_proj"]}
    folders = {
        key: make_adapter_bundle(tiny_model_dir, tmp_path / key, seed=20 + i, targets=targets)
        for i, (key, targets) in enumerate(specs.items())
    }
    cache = AdapterCache(load_causal_lm(tiny_model_dir), max_adapters=3)
    for key, folder in folders.items():
        cache.ensure(key, folder)
    keys = ["all", None, "qv", "k-up", "qv", "all"]
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (len(keys), 5))
    for tokens in (ids, ids[:, :1]):  # a prefill, then a decode step's shape
        cache.select(keys)
        with torch.inference_mode():
            mixed = cache.model(input_ids=tokens).logits
        for b, key in enumerate(keys):
            alone = peft_logits(tiny_model_dir, folders.get(key), tokens[b : b + 1])[0]
            torch.testing.assert_close(mixed[b], alone, rtol=1e-4, atol=1e-4)

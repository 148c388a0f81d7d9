"""The mixed-adapter LoRA products of the adapter cache, as the runner drives them: factors held
in fp32 on a CPU whatever the model's dtype, only the used adapters' columns multiplied, masks
kept while a batch is unchanged and rebuilt when rows join or leave or an adapter is evicted
and loaded again, bf16 products for prefills of a bf16 model; every row still computes what
that row's adapter alone computes."""

import pytest
import torch
from lora_helpers import make_adapter_bundle, peft_greedy
from test_adapter_cache import peft_logits

from tunelab.models import load_causal_lm
from tunelab.serving.adapters import MANY_ROWS, AdapterCache
from tunelab.serving.generation import GenerationParams
from tunelab.serving.runner import ModelRunner, RowGroup

QUESTIONS = ["hello there", "what colour is the sky?", "x", "a long question about owls", "ok"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("mixed-lora")
    return [make_adapter_bundle(tiny_model_dir, root / f"m{i}", seed=40 + i) for i in range(3)]


def loaded(model, bundles, **kw) -> AdapterCache:
    cache = AdapterCache(model, max_adapters=kw.pop("max_adapters", 3), **kw)
    for i, folder in enumerate(bundles):
        cache.ensure(f"m{i}", folder)
    return cache


def test_factors_are_fp32_on_cpu_for_a_bf16_model(tiny_model_dir, bundles):
    cache = loaded(load_causal_lm(tiny_model_dir).to(torch.bfloat16), bundles)
    assert cache.lora_dtype == torch.float32
    layer = next(iter(cache._layers.values()))
    assert layer.At.dtype == layer.Bt.dtype == torch.float32
    fp32 = loaded(load_causal_lm(tiny_model_dir), bundles)
    assert cache.nbytes == fp32.nbytes  # the bound counts the bytes held: fp32 either way


def test_a_batch_multiplies_only_the_columns_of_its_adapters(tiny_model_dir, bundles):
    """Three rank-8 adapters loaded; rows of the middle one use its 8 columns, not all 24."""
    cache = loaded(load_causal_lm(tiny_model_dir), bundles)
    layer = next(iter(cache._layers.values()))
    at, rank, _ = layer.blocks["m1"]
    cache.select(["m1", None, "m1"])
    lo, hi, mask = cache._plan_for(layer.layout)
    assert (lo, hi) == (at, at + rank) and mask.shape == (3, 1, rank)
    assert mask[1].abs().sum() == 0  # the base row adds nothing
    cache.select(["m0", "m2"])
    lo, hi, mask = cache._plan_for(layer.layout)
    assert (lo, hi) == (0, sum(r for _, r, _ in layer.layout))


def test_masks_are_kept_while_the_rows_stay_and_rebuilt_when_they_change(tiny_model_dir, bundles):
    cache = loaded(load_causal_lm(tiny_model_dir), bundles)
    layer = next(iter(cache._layers.values()))
    keys = ["m0", "m1", None]
    cache.select(keys)
    plan = cache._plan_for(layer.layout)
    cache.select(list(keys))  # the next decode step of the same batch
    assert cache._plan_for(layer.layout) is plan
    keys[1] = "m2"  # the caller's list changing later must not leak into the selection
    assert cache._rows == ["m0", "m1", None]
    cache.select(keys)  # a row changed adapter: a new mask
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 1))
    with torch.inference_mode():
        mixed = cache.model(input_ids=ids).logits
    for b, folder in enumerate([bundles[0], bundles[2], None]):
        alone = peft_logits(tiny_model_dir, folder, ids[b : b + 1])[0]
        torch.testing.assert_close(mixed[b], alone, rtol=1e-4, atol=1e-4)


def test_evicted_and_reloaded_adapter_gets_fresh_masks(tiny_model_dir, bundles):
    """Evicting an adapter moves the others' columns; the same row keys selected again after
    the reload must not reuse masks built for the old columns."""
    cache = loaded(load_causal_lm(tiny_model_dir), bundles)
    keys = ["m1", "m2", "m0"]
    ids = torch.randint(0, 1000, (3, 1))
    cache.select(keys)
    with torch.inference_mode():
        before = cache.model(input_ids=ids).logits
    cache.evict("m0")  # m1 and m2 move left
    cache.ensure("m0", bundles[0])  # m0 comes back last
    cache.select(keys)
    with torch.inference_mode():
        after = cache.model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_bf16_prefill_and_decode_match_each_adapter_alone(tiny_model_dir, bundles):
    """A bf16 model: a prefill of at least MANY_ROWS tokens runs the bf16 products,
    a decode step the fp32 ones. Each row stays what its adapter computes alone and what PEFT
    computes in fp32, up to bf16 noise several times smaller than the adapter's own effect."""
    cache = loaded(load_causal_lm(tiny_model_dir).to(torch.bfloat16), bundles)
    keys = ["m0", "m2", "m1", "m0", "m2", None]
    width = MANY_ROWS // len(keys) + 2
    torch.manual_seed(2)
    ids = torch.randint(0, 1000, (len(keys), width))
    folders = {f"m{i}": f for i, f in enumerate(bundles)}

    def alone(key, tokens):
        cache.select([key])
        with torch.inference_mode():
            return cache.model(input_ids=tokens).logits.float()[0]

    for tokens in (ids, ids[:, :1]):
        cache.select(keys)
        with torch.inference_mode():
            mixed = cache.model(input_ids=tokens).logits.float()
        for b, key in enumerate(keys[:-1]):
            row = tokens[b : b + 1]
            effect = (alone(key, row) - alone(None, row)).abs().max()
            assert (mixed[b] - alone(key, row)).abs().max() < effect / 5
            reference = peft_logits(tiny_model_dir, folders[key], row)[0]
            assert (mixed[b] - reference).abs().max() < effect / 3


def test_rows_joining_and_leaving_keep_each_adapters_tokens(tiny_model_dir, tok, prompts, bundles):
    """Continuous batching over mixed adapters (two rows at a time: rows leave and others join
    mid-batch, changing the masks), then an adapter evicted and loaded again: every group's
    greedy tokens equal that group served alone, and PEFT's generate for its adapter."""
    cache = loaded(load_causal_lm(tiny_model_dir), bundles)
    runner = ModelRunner(cache.model, tok, adapters=cache)
    keys = ["m0", "m1", None, "m2", "m1"]
    lengths = [6, 14, 9, 16, 3]  # rows finish at different steps
    groups = [
        RowGroup(p, GenerationParams(temperature=0, max_output_tokens=n), adapter_key=k)
        for p, k, n in zip(prompts, keys, lengths, strict=True)
    ]
    alone = [runner.generate([g])[0].token_ids for g in groups]
    batched = [r.token_ids for r in runner.generate(groups, max_batch_size=2)]
    assert batched == alone
    assert [r.token_ids for r in runner.generate(groups)] == alone
    cache.evict("m0")
    cache.ensure("m0", bundles[0])
    assert [r.token_ids for r in runner.generate(groups, max_batch_size=3)] == alone
    assert alone[3][0] == peft_greedy(tiny_model_dir, bundles[2], prompts[3], lengths[3])
    assert alone[0][0] == peft_greedy(tiny_model_dir, bundles[0], prompts[0], lengths[0])


def test_decode_products_run_on_one_thread_and_the_count_is_restored(
    tiny_model_dir, bundles, monkeypatch
):
    """A decode step's LoRA products are too small to share between threads: they run on one,
    and the caller's thread count is back afterwards (a prefill's keep all threads)."""
    from tunelab.serving import adapters

    seen = []
    real = adapters._add_lora

    def spy(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(adapters, "_add_lora", spy)
    cache = loaded(load_causal_lm(tiny_model_dir), bundles)
    ids = torch.randint(0, 1000, (MANY_ROWS, 2))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for tokens, threads in ((ids[:4, :1], 1), (ids, 2)):  # a decode step, a prefill
            seen.clear()
            cache.select(["m0", "m1", "m2", None] * (len(tokens) // 4))
            with torch.inference_mode():
                cache.model(input_ids=tokens)
            assert seen and set(seen) == {threads}
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

"""The model runner on its own, synchronously (no engine thread): rollout answers and their cut
flags, continuous batching equal to one batch, a live model's weight changes seen at once."""

import pytest
import torch
from lora_helpers import TARGETS, rambling_model

from tunelab.models import load_causal_lm
from tunelab.serving.generation import GenerationParams
from tunelab.serving.runner import ModelRunner, RowGroup, sample_answers

GREEDY = GenerationParams(temperature=0, max_output_tokens=10)
QUESTIONS = ["hi", "what colour is the sky?", "x", "a long question about owls and cats"]


@pytest.fixture(scope="module")
def runner(tiny_model_dir, tok):
    """Over the tiny model with wider random weights: it rambles in varied tokens."""
    return ModelRunner(rambling_model(tiny_model_dir), tok)


def test_rollout_answers_end_with_their_eos_and_cut_marks_the_budget(runner, prompts):
    (free,), (cut,) = sample_answers(runner, prompts[:1], 1, GREEDY)
    assert cut and len(free) == 10  # the random model never ends by itself
    k = next(i for i in range(1, 10) if free[i] not in free[:i])
    eos = runner.eos_ids
    runner.eos_ids = frozenset({int(free[k])})  # the k-th greedy token now ends the answer
    try:
        (ended,), (cut,) = sample_answers(runner, prompts[:1], 1, GREEDY)
    finally:
        runner.eos_ids = eos
    assert not cut
    assert ended.tolist() == free[: k + 1].tolist()  # the end-of-sequence token included


def test_continuous_batching_equals_one_batch(runner, prompts):
    groups = [RowGroup(p, GREEDY, n=1 + i % 2) for i, p in enumerate(prompts)]
    together = runner.generate(groups)
    done = []
    few = runner.generate(groups, max_batch_size=2, on_done=lambda i, r: done.append(i))
    assert [r.token_ids for r in few] == [r.token_ids for r in together]
    assert sorted(done) == [0, 1, 2, 3]
    assert not runner.rows
    assert together[1].token_ids[0] == together[1].token_ids[1]  # greedy candidates agree


def test_seeded_candidates_follow_their_seeds(runner, prompts):
    sampled = GenerationParams(temperature=1.0, top_k=0, top_p=1.0, max_output_tokens=8, seed=40)
    (three,) = runner.generate([RowGroup(prompts[1], sampled, n=3)])
    for c in range(3):
        alone = sampled.model_copy(update={"seed": 40 + c})
        (one,) = runner.generate([RowGroup(prompts[1], alone)])
        assert one.token_ids[0] == three.token_ids[c]
    assert len({tuple(t) for t in three.token_ids}) > 1


def test_the_output_head_reads_a_contiguous_last_position(runner, prompts):
    """A bf16 linear over a strided (B, 1, C) slice copies its whole weight once per row (0.6 s
    for SmolLM2-135M's head at 4 rows): the prefill hands the head a contiguous input."""
    seen = []
    hook = runner.model.lm_head.register_forward_pre_hook(
        lambda module, args: seen.append((tuple(args[0].shape), args[0].is_contiguous()))
    )
    try:
        runner.generate(
            [RowGroup(p, GREEDY.model_copy(update={"max_output_tokens": 2})) for p in prompts]
        )
    finally:
        hook.remove()
    assert seen[0] == ((len(prompts), 1, runner.model.config.hidden_size), True)  # the prefill
    assert all(contiguous for _, contiguous in seen)


def test_a_live_peft_model_is_used_as_it_is_now(tiny_model_dir, tok, prompts):
    """RL rollouts: the policy's adapter changes every step, and the runner holds no copy."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0)
    policy = get_peft_model(load_causal_lm(tiny_model_dir), config)
    runner = ModelRunner(policy, tok)
    before = sample_answers(runner, prompts[:2], 1, GREEDY)[0]
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)
    after = sample_answers(runner, prompts[:2], 1, GREEDY)[0]
    assert [a.tolist() for a in after] != [b.tolist() for b in before]
    fresh = sample_answers(ModelRunner(policy, tok), prompts[:2], 1, GREEDY)[0]
    assert [a.tolist() for a in after] == [f.tolist() for f in fresh]
    assert any(p.requires_grad for p in policy.parameters())  # still trainable


def test_rows_cannot_name_adapters_without_an_adapter_cache(runner, prompts):
    with pytest.raises(ValueError, match="not loaded in this runner"):
        runner.generate([RowGroup(prompts[0], GREEDY, adapter_key="someone")])
    assert not runner.rows
    with pytest.raises(ValueError, match="prompt is empty"):
        runner.check_prompt([])


def test_forward_passes_the_cache_under_the_name_transformers_expects(tiny_model_dir, tok, prompts):
    """transformers 5.25 renamed forward's ``past_key_values`` to ``cache`` (removal of the old
    name announced for 5.40): the transformers path of the runner (prefill, and decode without
    the lean step) must not use the deprecated name."""
    import warnings

    runner = ModelRunner(load_causal_lm(tiny_model_dir).eval(), tok, lean_decode=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        results = runner.generate([RowGroup(p, GREEDY) for p in prompts])
    assert all(len(r.token_ids[0]) > 0 for r in results)


def test_tokens_are_drawn_on_one_thread_and_the_count_is_restored(runner, prompts, monkeypatch):
    """Sampling's few passes over (B, V) logits run on one thread (on two, a sampled single
    stream served 25 tok/s against 38 greedy); the step's thread count comes back after."""
    import tunelab.serving.runner as runner_module

    seen = []
    real = runner_module.sample_batch

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "sample_batch", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        params = GenerationParams(temperature=0.7, top_k=40, max_output_tokens=3, seed=1)
        runner.generate([RowGroup(prompts[0], params)])
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

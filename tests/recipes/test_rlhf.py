"""Reinforcement learning (RLOO) on a tiny model: the per-step numbers, one base model carrying
policy, reward model and reference, the KL starting at exactly zero, kl_coeff 0 skipping the
reference, the exact bundle, evaluation against the base, and resume equal to uninterrupted."""

import json

import pytest
import torch
from safetensors.torch import load_file
from support import preference_rows, write_jsonl

from tunelab.configs.rlhf import RLHFConfig
from tunelab.data.preference import load_prompts
from tunelab.models import load_tokenizer
from tunelab.models.reward_head import load_head
from tunelab.recipes.reward_model import train_reward_model
from tunelab.recipes.rlhf import REWARD, answers_and_scores, evaluate_policy, train_policy
from tunelab.training.lora import lora_model
from tunelab.training.run import TrainingInterrupted
from tunelab.training.sampling_policy import rollout_params


def rl_config(model_dir, **overrides):
    values = dict(
        base_model=str(model_dir),
        reward_model_train_steps=10,
        reward_model_learning_rate_multiplier=10.0,
        reinforcement_learning_train_steps=4,
        reinforcement_learning_rate_multiplier=10.0,
        target_sequence_length=6,
        prompts_per_step=2,
        samples_per_prompt=3,
        checkpoint_every_steps=2,
        seed=11,
    )
    return RLHFConfig(**(values | overrides))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """A reward model trained once for the module, and a prompt file."""
    folder = tmp_path_factory.mktemp("rlhf")
    pairs = write_jsonl(folder / "pairs.jsonl", preference_rows(32))
    prompts = write_jsonl(
        folder / "prompts.jsonl", [{"input_text": f"Question {i}?"} for i in range(12)]
    )
    rm = train_reward_model(rl_config(tiny_model_dir).reward_model(), pairs, folder / "rm")
    return rm.bundle_dir, prompts


def rows_of(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_policy_trains_with_the_per_step_numbers(tmp_path, tiny_model_dir, setup):
    rm_dir, prompts = setup
    result = train_policy(rl_config(tiny_model_dir), prompts, rm_dir, tmp_path / "run")

    rows = rows_of(result.adapter_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert {"reward", "kl", "response_length", "train_loss", "penalized_reward"} <= row.keys()
        assert 1 <= row["response_length"] <= 6
        assert row["penalized_reward"] == pytest.approx(row["reward"] - 0.1 * row["kl"], abs=1e-5)
    # Before the first update the policy's LoRA is zero: policy and reference are the same
    # model, so the KL of step 1 is 0 (to float rounding: the policy's log-probs come from the
    # fused training forward, the reference's from PEFT's plain one). After updates it is not.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert any(abs(r["kl"]) > 1e-4 for r in rows[1:])

    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tuning_config.json",
        "data_stats.json",
        "metrics.jsonl",
        "reward_curve.png",
        "manifest.json",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert weights and all("lora_" in k and "reward" not in k for k in weights)
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    assert manifest["method"] == "rlhf" and manifest["reward_model"]["method"] == "reward_model"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_one_base_model_carries_policy_reward_model_and_reference(
    tmp_path, tiny_model_dir, setup, monkeypatch
):
    """Only the policy adapter is trained; the reward adapter rides on the same base weights."""
    import peft

    rm_dir, prompts = setup
    seen = {}
    original = peft.PeftModel.load_adapter

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen["adapters"] = sorted(self.peft_config)
        seen["trainable"] = {n for n, p in self.named_parameters() if p.requires_grad}
        seen["models"] = sum(isinstance(m, torch.nn.Embedding) for m in self.modules())
        return out

    monkeypatch.setattr(peft.PeftModel, "load_adapter", spy)
    train_policy(
        rl_config(tiny_model_dir, reinforcement_learning_train_steps=1),
        prompts,
        rm_dir,
        tmp_path / "run",
    )
    assert seen["adapters"] == ["default", "reward"]
    assert seen["models"] == 1  # one embedding table: one copy of the base weights
    assert seen["trainable"] and all(".default." in n for n in seen["trainable"])


def test_kl_coeff_zero_skips_the_reference_pass(tmp_path, tiny_model_dir, setup, monkeypatch):
    import peft

    def no_reference(self):
        raise AssertionError("kl_coeff=0 must not run the reference model")

    monkeypatch.setattr(peft.PeftModel, "disable_adapter", no_reference)
    rm_dir, prompts = setup
    config = rl_config(tiny_model_dir, kl_coeff=0.0, reinforcement_learning_train_steps=2)
    result = train_policy(config, prompts, rm_dir, tmp_path / "run")
    rows = rows_of(result.adapter_dir / "metrics.jsonl")
    assert all(r["kl"] is None and r["penalized_reward"] == r["reward"] for r in rows)


def test_interrupted_run_resumes_to_the_same_policy(tmp_path, tiny_model_dir, setup):
    rm_dir, prompts = setup
    config = rl_config(tiny_model_dir, reinforcement_learning_train_steps=5)
    straight = train_policy(config, prompts, rm_dir, tmp_path / "straight")

    done = []
    with pytest.raises(TrainingInterrupted):
        train_policy(
            config,
            prompts,
            rm_dir,
            tmp_path / "resumed",
            on_progress=lambda p: done.append(p.step) if p.phase == "training" else None,
            should_stop=lambda: len(done) >= 3,
        )
    resumed = train_policy(config, prompts, rm_dir, tmp_path / "resumed")
    assert resumed.resumed_from_step == 3
    expected = load_file(straight.adapter_dir / "adapter_model.safetensors")
    got = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    a, b = (
        rows_of(straight.adapter_dir / "metrics.jsonl"),
        rows_of(resumed.adapter_dir / "metrics.jsonl"),
    )
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert [r["reward"] for r in b] == pytest.approx([r["reward"] for r in a], abs=1e-6)


def test_evaluation_against_the_base_model(tmp_path, tiny_model_dir, setup):
    rm_dir, prompts = setup
    result = train_policy(rl_config(tiny_model_dir), prompts, rm_dir, tmp_path / "run")
    eval_file = write_jsonl(
        tmp_path / "eval.jsonl", [{"input_text": f"Other {i}?"} for i in range(5)]
    )
    report = evaluate_policy(result.adapter_dir, rm_dir, eval_file, examples=2)
    assert report["prompts"] == 5 and len(report["examples"]) == 2
    assert 0.0 <= report["win_rate"] <= 1.0 - report["tie_rate"]
    assert 1 <= report["mean_length_base"] <= 6 and 1 <= report["mean_length_tuned"] <= 6
    assert {"prompt", "base", "tuned", "reward_base", "reward_tuned"} == report["examples"][
        0
    ].keys()
    scores = [e["reward_tuned"] > e["reward_base"] for e in report["examples"]]
    assert all(isinstance(s, bool) for s in scores)


def test_sampled_answers_and_scores_do_not_depend_on_the_batch_size(tiny_model_dir, setup):
    """What bench_rlhf.py judges any trainer's policy with: seeded samples from the policy or
    the base model under it, each scored by the reward model, the same in any chunking."""
    rm_dir, prompts_file = setup
    tokenizer = load_tokenizer(tiny_model_dir)
    prompts, _ = load_prompts(prompts_file, tokenizer)
    model = lora_model(tiny_model_dir, 4, 8)  # a fresh policy: its LoRA B is zero
    model.load_adapter(rm_dir, adapter_name=REWARD, is_trainable=False)
    model.eval()
    judge = {"head": load_head(rm_dir), "tokenizer": tokenizer, "samples": 3}
    params = rollout_params(1.0, 6, seed=5)
    answers, scores = answers_and_scores(model, prompts, params, batch_size=16, **judge)
    chunked, chunked_scores = answers_and_scores(model, prompts, params, batch_size=5, **judge)
    base, base_scores = answers_and_scores(model, prompts, params, policy=False, **judge)

    assert len(answers) == len(scores) == 3 * len(prompts)
    assert [a.tolist() for a in chunked] == [a.tolist() for a in answers]
    torch.testing.assert_close(chunked_scores, scores)
    # A fresh policy is its base model: same draws, same scores.
    assert [a.tolist() for a in base] == [a.tolist() for a in answers]
    torch.testing.assert_close(base_scores, scores)
    assert len({tuple(a.tolist()) for a in answers[:3]}) > 1  # three draws, not one
    assert scores.std() > 0


def test_reward_model_on_another_base_is_refused(
    tmp_path, tiny_model_dir, default_model_dir, setup
):
    rm_dir, prompts = setup
    config = rl_config(tiny_model_dir).model_copy(update={"base_model": str(default_model_dir)})
    with pytest.raises(ValueError, match="share one base model"):
        train_policy(config, prompts, rm_dir, tmp_path / "run")

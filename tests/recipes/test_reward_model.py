"""The reward model on a tiny model: it learns a preference, writes the exact bundle, reloads to
the recorded held-out numbers, holds out a seeded split, and resumes to the same weights."""

import json

import pytest
import torch
from safetensors.torch import load_file
from support import preference_rows, write_jsonl

from tunelab.configs.rlhf import RewardModelConfig
from tunelab.data.preference import load_preference
from tunelab.models import load_tokenizer
from tunelab.models.reward_head import load_head
from tunelab.recipes.reward_model import evaluate_pairs, split_pairs, train_reward_model
from tunelab.training.run import TrainingInterrupted


def rm_config(model_dir, **overrides):
    values = dict(
        base_model=str(model_dir),
        train_steps=24,
        batch_size=8,
        learning_rate_multiplier=10.0,
        eval_every_steps=8,
        checkpoint_every_steps=5,
        target_sequence_length=24,
        seed=5,
    )
    return RewardModelConfig(**(values | overrides))


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", preference_rows(64))


def test_learns_the_preference_and_writes_the_bundle(tmp_path, tiny_model_dir, pairs_file):
    result = train_reward_model(rm_config(tiny_model_dir), pairs_file, tmp_path / "run")

    rows = [json.loads(x) for x in (result.bundle_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 24 and sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert result.eval_pairs == 6  # 10% of 64, held out with a seed
    assert result.pairwise_accuracy >= 0.8
    assert {"train_accuracy", "reward_margin", "grad_norm"} <= rows[0].keys()
    assert {"eval_accuracy", "eval_reward_margin"} <= rows[-1].keys()
    files = {p.name for p in result.bundle_dir.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "reward_head.safetensors",
        "tokenizer.json",
        "tuning_config.json",
        "data_stats.json",
        "metrics.jsonl",
        "loss_curve.png",
        "manifest.json",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert manifest["kind"] == "reward_model" and manifest["method"] == "reward_model"
    assert manifest["pairwise_accuracy"] == result.pairwise_accuracy
    assert load_file(result.bundle_dir / "reward_head.safetensors")["weight"].shape == (1, 64)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_reloaded_bundle_scores_as_recorded(tmp_path, tiny_model_dir, pairs_file):
    """What the RL stage loads (adapter + head) reproduces the held-out numbers of training."""
    from peft import PeftModel

    from tunelab.models import load_causal_lm

    config = rm_config(tiny_model_dir)
    result = train_reward_model(config, pairs_file, tmp_path / "run")
    tokenizer = load_tokenizer(result.bundle_dir)
    pairs, _ = load_preference(pairs_file, tokenizer, target_sequence_length=24)
    _, held_out = split_pairs(pairs, config.eval_fraction, config.seed)
    model = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), result.bundle_dir)
    again = evaluate_pairs(
        model,
        load_head(result.bundle_dir),
        held_out,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
    )
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert again["eval_accuracy"] == manifest["pairwise_accuracy"]
    assert again["eval_reward_margin"] == pytest.approx(manifest["eval_reward_margin"], rel=1e-4)


def test_held_out_split_is_seeded_and_disjoint(tiny_model_dir, pairs_file):
    tokenizer = load_tokenizer(tiny_model_dir)
    pairs, _ = load_preference(pairs_file, tokenizer)
    train, held = split_pairs(pairs, 0.25, seed=1)
    again_train, again_held = split_pairs(pairs, 0.25, seed=1)
    assert [p.line for p in held] == [p.line for p in again_held] and len(held) == 16
    assert {p.line for p in train}.isdisjoint({p.line for p in held})
    assert len(train) + len(held) == 64
    assert [p.line for p in split_pairs(pairs, 0.25, seed=2)[1]] != [p.line for p in held]
    assert split_pairs(pairs[:9], 0.5, seed=1) == (pairs[:9], [])  # too few to hold any out


def test_an_evaluation_file_replaces_the_split(tmp_path, tiny_model_dir, pairs_file):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", preference_rows(10, offset=500))
    result = train_reward_model(
        rm_config(tiny_model_dir, train_steps=4), pairs_file, tmp_path / "run", eval_file
    )
    stats = json.loads((result.bundle_dir / "data_stats.json").read_text())
    assert (stats["train_pairs"], stats["eval_pairs"]) == (64, 10)


def test_interrupted_run_resumes_to_the_same_reward_model(tmp_path, tiny_model_dir, pairs_file):
    config = rm_config(tiny_model_dir, train_steps=12)
    reference = train_reward_model(config, pairs_file, tmp_path / "straight")

    steps_seen = []

    def stop_after_seven():
        return len(steps_seen) >= 7

    with pytest.raises(TrainingInterrupted):
        train_reward_model(
            config,
            pairs_file,
            tmp_path / "resumed",
            on_progress=lambda p: steps_seen.append(p.step) if p.phase == "training" else None,
            should_stop=stop_after_seven,
        )
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000007").is_dir()
    resumed = train_reward_model(config, pairs_file, tmp_path / "resumed")
    assert resumed.resumed_from_step == 7
    for name in ("adapter_model.safetensors", "reward_head.safetensors"):
        expected = load_file(reference.bundle_dir / name)
        got = load_file(resumed.bundle_dir / name)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    rows = [json.loads(x) for x in (resumed.bundle_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 13))

"""DPO on a tiny model: preferred answers gain on held-out pairs, the reference is the policy at
step 0 (computed once, only for the pairs trained on), it can start from a supervised adapter,
and an interrupted run resumes to the same adapter."""

import json

import pytest
import torch
from safetensors.torch import load_file
from support import preference_rows, write_jsonl

from tunelab.configs import SFTConfig
from tunelab.configs.dpo import DPOConfig
from tunelab.data.preference import load_preference
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.recipes.dpo import REFERENCE_FILE, answer_logprobs, train_dpo
from tunelab.recipes.sft import train_sft
from tunelab.training.run import TrainingInterrupted


def dpo_config(model_dir, **overrides):
    values = dict(
        base_model=str(model_dir),
        train_steps=16,
        batch_size=8,
        learning_rate_multiplier=30.0,
        eval_every_steps=8,
        checkpoint_every_steps=4,
        target_sequence_length=24,
        seed=3,
    )
    return DPOConfig(**(values | overrides))


@pytest.fixture
def data(tmp_path):
    return (
        write_jsonl(tmp_path / "pairs.jsonl", preference_rows(64)),
        write_jsonl(tmp_path / "heldout.jsonl", preference_rows(16, offset=1000)),
    )


def rows_of(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_dpo_raises_the_heldout_margin_and_writes_the_bundle(tmp_path, tiny_model_dir, data):
    pairs, heldout = data
    result = train_dpo(dpo_config(tiny_model_dir), pairs, tmp_path / "run", heldout)

    ev = result.evaluation
    assert ev["eval_logp_margin"] > ev["eval_reference_logp_margin"] + 1.0
    assert ev["eval_reward_accuracy"] >= 0.9 and ev["eval_loss"] < 0.69
    rows = rows_of(result.adapter_dir / "metrics.jsonl")
    train = [r for r in rows if "train_loss" in r]
    assert len(train) == 16 and train[0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert train[-1]["reward_margin"] > train[0]["reward_margin"]
    assert {"chosen_reward", "rejected_reward", "reward_accuracy"} <= train[0].keys()
    assert [r["step"] for r in rows if "eval_loss" in r] == [8, 16]

    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tuning_config.json",
        "data_stats.json",
        "metrics.jsonl",
        "loss_curve.png",
        "manifest.json",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    assert manifest["method"] == "dpo" and manifest["evaluation"] == ev


def test_reference_is_computed_once_for_the_pairs_trained_on(tmp_path, tiny_model_dir, data):
    pairs, heldout = data
    train_dpo(dpo_config(tiny_model_dir, train_steps=3), pairs, tmp_path / "run", heldout)
    saved = load_file(tmp_path / "run" / REFERENCE_FILE)
    used = ~torch.isnan(saved["train"][:, 0])
    assert int(used.sum()) == 3 * 8  # 3 steps of 8 pairs out of 64: only those
    assert saved["validation"].shape == (16, 2) and not torch.isnan(saved["validation"]).any()
    # the step-0 policy is the base model (LoRA B starts at zero)
    tokenizer = load_tokenizer(tiny_model_dir)
    encoded, _ = load_preference(heldout, tokenizer, target_sequence_length=24)
    base = answer_logprobs(load_causal_lm(tiny_model_dir), encoded, tokenizer.pad_token_id)
    torch.testing.assert_close(saved["validation"], base, rtol=0, atol=1e-4)


def test_starting_from_a_supervised_adapter_makes_it_the_reference(tmp_path, tiny_model_dir, data):
    from peft import PeftModel

    pairs, heldout = data
    sft_data = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"input_text": f"Question {i}?", "output_text": f"It is {i}."} for i in range(32)],
    )
    sft = train_sft(
        SFTConfig(base_model=str(tiny_model_dir), train_steps=6, learning_rate_multiplier=5.0),
        sft_data,
        tmp_path / "sft",
    )
    config = dpo_config(tiny_model_dir, train_steps=2)
    result = train_dpo(config, pairs, tmp_path / "run", heldout, init_adapter_dir=sft.adapter_dir)

    tokenizer = load_tokenizer(tiny_model_dir)
    encoded, _ = load_preference(heldout, tokenizer, target_sequence_length=24)
    sft_model = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), sft.adapter_dir)
    sft_logps = answer_logprobs(sft_model, encoded, tokenizer.pad_token_id)
    saved = load_file(tmp_path / "run" / REFERENCE_FILE)
    torch.testing.assert_close(saved["validation"], sft_logps, rtol=0, atol=1e-4)
    margin = (sft_logps[:, 0] - sft_logps[:, 1]).mean().item()
    assert result.evaluation["eval_reference_logp_margin"] == pytest.approx(margin, abs=1e-4)
    # the trained adapter continues the supervised one (same rank and modules)
    assert (
        load_file(result.adapter_dir / "adapter_model.safetensors").keys()
        == load_file(sft.adapter_dir / "adapter_model.safetensors").keys()
    )


def test_an_adapter_of_another_base_is_refused(tmp_path, tiny_model_dir, default_model_dir, data):
    pairs, _ = data
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"input_text": "Q", "output_text": "A"}] * 4)
    sft = train_sft(
        SFTConfig(base_model=str(tiny_model_dir), train_steps=1), sft_data, tmp_path / "sft"
    )
    config = dpo_config(default_model_dir, train_steps=1)
    with pytest.raises(ValueError, match="not on this run's base model"):
        train_dpo(config, pairs, tmp_path / "run", init_adapter_dir=sft.adapter_dir)


def test_interrupted_run_resumes_to_the_same_adapter(tmp_path, tiny_model_dir, data):
    pairs, heldout = data
    config = dpo_config(tiny_model_dir, train_steps=10)
    straight = train_dpo(config, pairs, tmp_path / "straight", heldout)
    done = []
    with pytest.raises(TrainingInterrupted):
        train_dpo(
            config,
            pairs,
            tmp_path / "resumed",
            heldout,
            on_progress=lambda p: done.append(p.step) if p.phase == "training" else None,
            should_stop=lambda: len(done) >= 6,
        )
    resumed = train_dpo(config, pairs, tmp_path / "resumed", heldout)
    assert resumed.resumed_from_step == 6
    expected = load_file(straight.adapter_dir / "adapter_model.safetensors")
    got = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    assert resumed.evaluation == pytest.approx(straight.evaluation, abs=1e-5)


def test_a_resumed_run_recomputes_its_reference_in_the_precision_it_started_with(
    tmp_path, tiny_model_dir, data, monkeypatch
):
    """The reference is computed before the first step as the steps compute (bf16 here): a
    resumed run that must compute it again takes the checkpoint's precision, not a new
    measurement, and the model before any step, not the checkpoint's."""
    from tunelab.training import precision

    pairs, heldout = data
    config = dpo_config(tiny_model_dir, train_steps=6, precision="auto")
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda width: 3.0)
    steps = iter(range(100))
    with pytest.raises(TrainingInterrupted):  # stop after 3 steps; a checkpoint is written
        train_dpo(config, pairs, tmp_path / "run", should_stop=lambda: next(steps) >= 3)
    first = load_file(tmp_path / "run" / REFERENCE_FILE)
    (tmp_path / "run" / REFERENCE_FILE).unlink()
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda width: 0.5)  # now says fp32
    result = train_dpo(config, pairs, tmp_path / "run")
    assert result.resumed_from_step == 3 and result.usage["precision"] == "bf16"
    again = load_file(tmp_path / "run" / REFERENCE_FILE)
    needed = ~torch.isnan(first["train"][:, 0])
    torch.testing.assert_close(again["train"][needed], first["train"][needed], rtol=0, atol=1e-5)

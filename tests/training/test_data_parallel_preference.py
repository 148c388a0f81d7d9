"""Data parallel on CPU with gloo for the preference recipes: DPO, the reward model and the RLHF
policy (RLOO) each train, on 2 processes sharing every global batch, the adapter (and reward
head) that 1 process trains on the same data order. Batch sizes are odd, so the two shares of a
batch differ in size and the weighted average of the gradients is what is tested."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import preference_rows, write_jsonl

from tunelab.configs.dpo import DPOConfig
from tunelab.configs.rlhf import RLHFConfig
from tunelab.recipes.dpo import train_dpo
from tunelab.recipes.reward_model import train_reward_model
from tunelab.recipes.rlhf import train_policy
from tunelab.training.launch import run_recipe


@pytest.fixture(autouse=True)
def short_collective_timeout(monkeypatch):
    # A broken test must fail, not wait the default 10 minutes in a collective.
    monkeypatch.setenv("TUNELAB_COLLECTIVE_TIMEOUT", "60")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefs")
    return {
        "pairs": write_jsonl(folder / "pairs.jsonl", preference_rows(22)),
        "heldout": write_jsonl(folder / "heldout.jsonl", preference_rows(6, offset=500)),
        "prompts": write_jsonl(
            folder / "prompts.jsonl", [{"input_text": f"Question {i}?"} for i in range(8)]
        ),
    }


def rl_config(model_dir, **overrides) -> RLHFConfig:
    values = dict(
        base_model=str(model_dir),
        reward_model_train_steps=4,
        reward_model_batch_size=7,  # shares of 4 and 3 pairs
        reward_model_learning_rate_multiplier=10.0,
        reinforcement_learning_train_steps=3,
        reinforcement_learning_rate_multiplier=10.0,
        prompts_per_step=3,  # shares of 2 and 1 prompts
        samples_per_prompt=2,
        target_sequence_length=10,  # pairs differ after ~6 tokens; rollouts stay short
        checkpoint_every_steps=2,
        precision="fp32",  # bf16 rounding would differ between the two layouts
        seed=13,
    )
    return RLHFConfig(**(values | overrides))


@pytest.fixture(scope="module")
def one_reward_model(tmp_path_factory, tiny_model_dir, files):
    """The reward model trained in one process: the reference of the reward model's test and
    the reward model of the policy's."""
    run_dir = tmp_path_factory.mktemp("rm-one") / "run"
    return train_reward_model(rl_config(tiny_model_dir).reward_model(), files["pairs"], run_dir)


def assert_same_tensors(a_file: Path, b_file: Path, trained_key: str) -> None:
    """Equal to float rounding. Adam divides each gradient element by its running RMS, so an
    element whose gradient is near 0 moves by its rounding noise (here up to ~5e-5 on weights of
    ~1e-2); a tensor as a whole stays within 1e-4 of relative difference, where weighting the
    two shares of a batch wrongly (4 and 3 examples averaged as equals) moves it by percents."""
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    assert max(a[k].abs().max() for k in a if trained_key in k) > 1e-4  # it trained
    for key in a:
        assert (a[key] - b[key]).norm() <= 1e-3 * a[key].norm() + 1e-7, key
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)


def train_rows(bundle: Path) -> list[dict]:
    rows = [json.loads(x) for x in (bundle / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train_loss" in r]


def assert_same_metrics(one: Path, two: Path, keys: tuple[str, ...]) -> None:
    """The logged numbers are the whole batch's (both ranks'), written once by rank 0."""
    a, b = train_rows(one), train_rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in keys:
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), (key, x["step"])


def test_dpo_on_two_processes_trains_the_adapter_of_one(tmp_path, tiny_model_dir, files):
    values = dict(
        base_model=str(tiny_model_dir),
        train_steps=4,
        batch_size=7,  # 22 pairs: batches of 7, 7, 7 and 1 (the 1 leaves a rank empty)
        learning_rate_multiplier=30.0,
        eval_every_steps=2,
        checkpoint_every_steps=2,
        target_sequence_length=12,
        precision="fp32",
        seed=3,
    )
    one = train_dpo(DPOConfig(**values), files["pairs"], tmp_path / "one", files["heldout"])
    two = run_recipe(
        train_dpo,
        DPOConfig(**values, processes=2),
        files["pairs"],
        tmp_path / "two",
        files["heldout"],
        processes=2,
    )
    adapter = "adapter_model.safetensors"
    assert_same_tensors(one.adapter_dir / adapter, two.adapter_dir / adapter, "lora_B")
    assert_same_metrics(
        one.adapter_dir, two.adapter_dir, ("train_loss", "reward_accuracy", "reward_margin")
    )
    assert two.evaluation["eval_loss"] == pytest.approx(one.evaluation["eval_loss"], rel=1e-4)
    assert two.usage["processes"] == 2


def test_reward_model_on_two_processes_trains_the_adapter_and_head_of_one(
    tmp_path, tiny_model_dir, files, one_reward_model
):
    one = one_reward_model
    two = run_recipe(
        train_reward_model,
        rl_config(tiny_model_dir, processes=2).reward_model(),
        files["pairs"],
        tmp_path / "two",
        processes=2,
    )
    for name, trained in (("adapter_model.safetensors", "lora_B"), ("reward_head.safetensors", "")):
        assert_same_tensors(one.bundle_dir / name, two.bundle_dir / name, trained)
    assert_same_metrics(one.bundle_dir, two.bundle_dir, ("train_loss", "train_accuracy"))
    assert two.pairwise_accuracy == one.pairwise_accuracy and two.eval_pairs == one.eval_pairs


def test_rlhf_policy_on_two_processes_trains_the_adapter_of_one(
    tmp_path, tiny_model_dir, files, one_reward_model
):
    rm_dir = one_reward_model.bundle_dir
    one = train_policy(rl_config(tiny_model_dir), files["prompts"], rm_dir, tmp_path / "one")
    two = run_recipe(
        train_policy,
        rl_config(tiny_model_dir, processes=2),
        files["prompts"],
        rm_dir,
        tmp_path / "two",
        processes=2,
    )
    # Each rank samples the answers of its own prompts, with the seeds those prompts draw in
    # one process: the same rollouts, so the same rewards, advantages and update.
    adapter = "adapter_model.safetensors"
    assert_same_tensors(one.adapter_dir / adapter, two.adapter_dir / adapter, "lora_B")
    assert_same_metrics(
        one.adapter_dir, two.adapter_dir, ("train_loss", "reward", "kl", "response_length")
    )

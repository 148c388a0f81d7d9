"""RL rollouts sample the current policy: in a bf16 run of RLOO (rlhf.py) and of RFT (rft.py)
every step's rollouts decode the merged bf16 copy (tunelab.training.sampling_policy) holding
the adapter the previous optimizer step left, not the live PEFT model and not a stale merge."""

import pytest
import torch
from support import preference_rows, write_jsonl

import tunelab.recipes.rft as rft
import tunelab.recipes.rlhf as rlhf
from tunelab.configs.rft import RFTConfig
from tunelab.configs.rlhf import RLHFConfig
from tunelab.recipes.reward_model import train_reward_model
from tunelab.serving.runner import sample_answers
from tunelab.training.sampling_policy import SamplingPolicy

STEPS = 3


def expected_merge(layer) -> torch.Tensor:
    """``bf16(W + scaling * B @ A)`` of a live PEFT LoRA layer, written out."""
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return (layer.base_layer.weight + layer.scaling["default"] * b @ a).bfloat16()


@pytest.fixture
def spied(monkeypatch):
    """Records, at each rollout, the model the runner decodes and what it should hold."""
    policies: list[SamplingPolicy] = []
    seen: list[dict] = []

    class Recorded(SamplingPolicy):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            policies.append(self)

    def spy(runner, prompts, samples, params):
        (policy,) = policies
        live = policy.model.get_base_model().model.layers[1].self_attn.v_proj
        decoded = runner.model.model.layers[1].self_attn.v_proj.weight
        seen.append(
            {
                "decoded": runner.model,
                "policy": policy,
                "weight": decoded.detach().clone(),
                "expected": expected_merge(live),
            }
        )
        return sample_answers(runner, prompts, samples, params)

    for module in (rlhf, rft):
        monkeypatch.setattr(module, "SamplingPolicy", Recorded)
        monkeypatch.setattr(module, "sample_answers", spy)
    return seen


def assert_rollouts_follow_the_adapter(seen: list[dict]) -> None:
    assert len(seen) == STEPS
    for step in seen:
        assert step["decoded"] is step["policy"].copy  # the merged copy, not PEFT's layers
        assert step["weight"].dtype == torch.bfloat16
        expected = step["expected"].float()
        # One rounding of the same sum (addmm may round the last bit the other way).
        assert (step["weight"].float() - expected).abs().max() <= expected.abs().max() * 2**-7
    moves = 0
    for before, after in zip(seen, seen[1:], strict=False):
        if torch.equal(after["expected"], before["expected"]):
            continue  # a step without an update (RFT: no reward differed)
        moves += 1  # the optimizer moved the adapter between rollouts...
        assert not torch.equal(after["weight"], before["weight"])  # ...and the copy followed
    assert moves > 0


def test_bf16_rloo_rollouts_decode_the_adapter_of_the_last_step(tmp_path, tiny_model_dir, spied):
    config = RLHFConfig(
        base_model=str(tiny_model_dir),
        reward_model_train_steps=2,
        reinforcement_learning_train_steps=STEPS,
        reinforcement_learning_rate_multiplier=10.0,
        target_sequence_length=6,
        prompts_per_step=2,
        samples_per_prompt=3,
        precision="bf16",
        seed=3,
    )
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"input_text": f"Q {i}?"} for i in range(6)])
    rm = train_reward_model(config.reward_model(), pairs, tmp_path / "rm")
    rlhf.train_policy(config, prompts, rm.bundle_dir, tmp_path / "run")
    assert_rollouts_follow_the_adapter(spied)


def test_bf16_rft_rollouts_decode_the_adapter_of_the_last_step(tmp_path, tiny_model_dir, spied):
    config = RFTConfig(
        base_model=str(tiny_model_dir),
        grader={"type": "text_similarity", "metric": "fuzzy_ratio", "reference": "{{item.ref}}"},
        train_steps=STEPS,
        learning_rate_multiplier=10.0,
        target_sequence_length=6,
        prompts_per_step=2,
        samples_per_prompt=3,
        grade_cut_answers=True,  # a random tiny model rarely ends within 6 tokens
        precision="bf16",
        seed=3,
    )
    rows = [{"input_text": f"Say word {i}.", "ref": f"word {i}"} for i in range(6)]
    rft.train_rft(config, write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "run")
    assert_rollouts_follow_the_adapter(spied)

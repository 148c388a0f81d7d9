"""On the real default model (SmolLM2-135M-Instruct) and the example preference set, where the
preferred answer is checkably the concise one: after RLHF the mean reward on held-out prompts
is above the base model's, the tuned model beats the base under the reward model on more than
70% of them, and its answers are shorter. Minutes on CPU: marked slow (CI runs it)."""

from pathlib import Path

import pytest

from tunelab.configs.rlhf import RLHFConfig
from tunelab.recipes.reward_model import train_reward_model
from tunelab.recipes.rlhf import evaluate_policy, train_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "preference"


@pytest.mark.slow
def test_rlhf_beats_the_base_model_on_heldout_prompts(tmp_path):
    config = RLHFConfig(
        reward_model_train_steps=10,
        reinforcement_learning_train_steps=16,
        reinforcement_learning_rate_multiplier=2.0,  # 1e-3: the short run of a demonstration
        target_sequence_length=32,
    )
    reward = train_reward_model(
        config.reward_model(), EXAMPLES / "preference.jsonl", tmp_path / "rm"
    )
    print(f"reward model: {reward.pairwise_accuracy:.0%} on {reward.eval_pairs} held-out pairs")
    assert reward.pairwise_accuracy >= 0.9

    policy = train_policy(config, EXAMPLES / "prompts.jsonl", reward.bundle_dir, tmp_path / "rl")
    report = evaluate_policy(policy.adapter_dir, reward.bundle_dir, EXAMPLES / "eval_prompts.jsonl")
    print(
        f"held-out prompts: {report['prompts']}; mean reward base {report['mean_reward_base']:.2f}, "
        f"tuned {report['mean_reward_tuned']:.2f}; tuned wins {report['win_rate']:.0%}; "
        f"mean length base {report['mean_length_base']:.1f}, tuned {report['mean_length_tuned']:.1f}"
    )
    for example in report["examples"]:
        print(example)
    assert report["mean_reward_tuned"] > report["mean_reward_base"]
    assert report["win_rate"] > 0.7
    assert report["mean_length_tuned"] < report["mean_length_base"]  # the preference, checked

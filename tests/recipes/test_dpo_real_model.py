"""On the real default model and the example preference set: DPO raises the margin between the
preferred (concise) and rejected (padded) answers of held-out pairs. Marked slow (CI runs it)."""

from pathlib import Path

import pytest

from tunelab.configs.dpo import DPOConfig
from tunelab.recipes.dpo import train_dpo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "preference"


@pytest.mark.slow
def test_dpo_raises_the_heldout_margin(tmp_path):
    config = DPOConfig(train_steps=8, eval_every_steps=8, target_sequence_length=32)
    result = train_dpo(
        config, EXAMPLES / "preference.jsonl", tmp_path / "run", EXAMPLES / "heldout_pairs.jsonl"
    )
    ev = result.evaluation
    print(
        f"held-out pairs: log pi(preferred) - log pi(rejected) {ev['eval_reference_logp_margin']:.2f}"
        f" -> {ev['eval_logp_margin']:.2f}; reward accuracy {ev['eval_reward_accuracy']:.0%}, "
        f"DPO loss {ev['eval_loss']:.3f}"
    )
    assert ev["eval_logp_margin"] > ev["eval_reference_logp_margin"] + 1.0
    assert ev["eval_reward_accuracy"] >= 0.9
    assert ev["eval_loss"] < 0.65  # log 2 = 0.693 at the start

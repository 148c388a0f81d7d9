"""On the real default model (SmolLM2-135M-Instruct) and the shipped RFT example (answer with
the number only, as ``Answer: N``): after reinforcement fine-tuning toward the example's grader,
the pass rate on held-out prompts (sentences training never shows) rises from the base model's,
with non-overlapping 95% bootstrap intervals. Minutes on CPU: marked slow (CI runs it)."""

import json
from pathlib import Path

import pytest

from tunelab.configs.rft import RFTConfig
from tunelab.recipes.rft import evaluate_rft, train_rft

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rft"

DEMO = dict(
    train_steps=12,
    learning_rate_multiplier=4.0,
    kl_coeff=0.02,
    target_sequence_length=10,
    checkpoint_every_steps=6,
)
"""The README's demonstration: 12 steps of 4 prompts x 4 samples at 4e-3 (a short run); the
answer ``Answer: 4316`` is 7 tokens and the end-of-turn token."""


@pytest.mark.slow
@pytest.mark.xfail(
    reason="not yet shown robust: the reward no longer pays for repeated digits and a step with "
    "no reward differences no longer moves the policy, but at this rate (8e-3) one AdamW step "
    "after a single passing sample turns every answer into 'Answer: Answer: ...', and at 4e-3 "
    "some seeds sample no passing answer in 12 steps; the 1/2-thread x 3-seed measurement is "
    "still to do (examples/rft/README.md)",
    strict=False,
)
def test_rft_raises_the_heldout_pass_rate(tmp_path):
    grader = json.loads((EXAMPLE / "grader.json").read_text())
    config = RFTConfig(grader=grader, **DEMO)
    result = train_rft(config, EXAMPLE / "train.jsonl", tmp_path / "run")
    report = evaluate_rft(result.adapter_dir, EXAMPLE / "validation.jsonl")
    base, tuned = report["pass_rate_base"], report["pass_rate_tuned"]
    print(
        f"held-out prompts: {report['prompts']}; pass rate base {base['value']:.0%} "
        f"[{base['low']:.0%}, {base['high']:.0%}] -> tuned {tuned['value']:.0%} "
        f"[{tuned['low']:.0%}, {tuned['high']:.0%}]; mean reward base "
        f"{report['mean_reward_base']['value']:.3f} -> tuned {report['mean_reward_tuned']['value']:.3f}"
    )
    for example in report["examples"]:
        print(example)
    for row in (
        json.loads(x) for x in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()
    ):
        print(f"step {row['step']}: reward {row['reward']:.3f}, pass {row['pass_rate']:.0%}")
    assert result.grader_failures == 0
    assert tuned["low"] > base["high"]  # non-overlapping 95% intervals
    assert report["pass_rate_difference"]["low"] > 0
    assert report["mean_reward_tuned"]["low"] > report["mean_reward_base"]["high"]

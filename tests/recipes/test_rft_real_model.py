"""On the real default model (SmolLM2-135M-Instruct) and the shipped RFT example (answer with
the number only, as ``Answer: N``): after reinforcement fine-tuning toward the example's grader,
the pass rate on held-out prompts (sentences training never shows, asked with no earlier
exchange) rises from the base model's, with non-overlapping 95% bootstrap intervals. Minutes on
CPU: marked slow (CI runs it). The README's command gives the same config (a fast test)."""

import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tunelab.configs.rft import RFTConfig
from tunelab.recipes.rft import evaluate_rft, train_rft

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "rft"

DEMO = dict(
    train_steps=16,
    samples_per_prompt=8,
    learning_rate_multiplier=1.0,
    warmup_ratio=0.25,
    kl_coeff=0.02,
    target_sequence_length=10,
    checkpoint_every_steps=8,
)
"""The README's demonstration (examples/rft/README.md, measured there over seeds and thread
counts): 16 steps of 4 prompts x 8 samples at 2e-3 after a 4-step warm-up; the answer
``Answer: 4316`` is 7 tokens and the end-of-turn token."""


@pytest.mark.slow
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


def _readme_command() -> list[str]:
    """The ``tunelab tune rft`` command of examples/rft/README.md, as arguments."""
    text = (EXAMPLE / "README.md").read_text()
    found = re.search(r"^ *tunelab (tune rft .*?)(?<!\\)$", text, re.M | re.S)
    assert found, "examples/rft/README.md shows no `tunelab tune rft` command"
    return shlex.split(found.group(1).replace("\\\n", " "))


def test_the_readme_command_is_the_demo_config(monkeypatch):
    """`tunelab tune rft` as the example's README writes it submits the config the slow test
    trains (and whose numbers the README reports)."""
    from tunelab.cli import app
    from tunelab.cli import tune as tune_cli

    submitted = []

    def fake_submit(services, config, name, datasets, idempotency_key):
        submitted.append((config, datasets))
        return SimpleNamespace(id="job-1"), True

    monkeypatch.setattr(tune_cli, "submit", fake_submit)
    monkeypatch.setattr(tune_cli, "_services", lambda: None)
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, [*_readme_command(), "--detach"])
    assert result.exit_code == 0, result.output
    config, datasets = submitted[-1]
    grader = json.loads((EXAMPLE / "grader.json").read_text())
    assert config == RFTConfig(grader=grader, **DEMO)
    assert datasets == {
        "train": Path("examples/rft/train.jsonl"),
        "validation": Path("examples/rft/validation.jsonl"),
    }

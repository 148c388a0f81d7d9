"""``tunelab tune rlhf`` and ``tunelab tune dpo`` from the command line on a tiny model: each
submits a job, runs it, registers the models, and the same command again finds the done job."""

import json
import os
import subprocess
import sys

from support import preference_rows, write_jsonl


def tunelab(*args, home):
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "tunelab.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_tune_rlhf_then_dpo_from_the_cli(tmp_path, tiny_model_dir, tunelab_home):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(24))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"input_text": f"Q {i}?"} for i in range(6)])
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"input_text": f"E {i}?"} for i in range(3)])
    rlhf = [
        "tune", "rlhf", "--preference", pairs, "--prompts", prompts, "--eval", evals,
        "--name", "cli-rlhf", "--base", tiny_model_dir, "--reward-model-train-steps", 3,
        "--reinforcement-learning-train-steps", 2, "--target-sequence-length", 12,
        "--prompts-per-step", 2, "--samples-per-prompt", 2, "--kl-coeff", 0.2,
    ]  # fmt: skip
    done = tunelab(*rlhf, home=tunelab_home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tuned model 'cli-rlhf' version 1" in done.stderr
    assert "reward model: pairwise accuracy" in done.stderr and "tuned wins" in done.stderr
    shown = tunelab("models", "show", "cli-rlhf", "--json", home=tunelab_home)
    version = json.loads(shown.stdout)
    assert version["method"] == "rlhf" and version["config"]["kl_coeff"] == 0.2
    assert (
        json.loads(
            tunelab("models", "show", "cli-rlhf-reward", "--json", home=tunelab_home).stdout
        )["method"]
        == "reward_model"
    )
    again = tunelab(*rlhf, home=tunelab_home)
    assert again.returncode == 0 and "already tuned" in again.stderr

    dpo = [
        "tune", "dpo", "--preference", pairs, "--name", "cli-dpo", "--base", tiny_model_dir,
        "--train-steps", 2, "--batch-size", 4, "--beta", 0.5, "--target-sequence-length", 16,
        "--validation", pairs,
    ]  # fmt: skip
    done = tunelab(*dpo, home=tunelab_home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "log-prob margin preferred - rejected" in done.stderr
    version = json.loads(tunelab("models", "show", "cli-dpo", "--json", home=tunelab_home).stdout)
    assert version["method"] == "dpo" and version["config"]["beta"] == 0.5


def test_bad_parameters_are_reported_together(tmp_path, tunelab_home):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(4))
    done = tunelab(
        "tune", "rlhf", "--preference", pairs, "--prompts", pairs, "--name", "x",
        "--kl-coeff", -1, "--samples-per-prompt", 1, home=tunelab_home,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--kl-coeff" in done.stderr and "--samples-per-prompt" in done.stderr

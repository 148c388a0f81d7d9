"""``tunelab tune rft`` and ``tunelab graders test`` from the command line on a tiny model: the
job runs and reports base vs tuned with intervals; the dry run shows the references passing
and the base samples' distribution; a bad grader file is refused saying where."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from support import write_jsonl

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rft"


def tunelab(*args, home):
    env = {**os.environ, "TUNELAB_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tunelab.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_tune_rft_from_the_cli(tmp_path, tiny_model_dir, tunelab_home):
    rows = [json.loads(x) for x in (EXAMPLE / "train.jsonl").read_text().splitlines()]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:8])
    held = write_jsonl(tmp_path / "held.jsonl", rows[8:12])
    args = [
        "tune", "rft", "--train", train, "--validation", held,
        "--grader", EXAMPLE / "grader.json", "--name", "cli-rft", "--base", tiny_model_dir,
        "--train-steps", 2, "--prompts-per-step", 2, "--samples-per-prompt", 2,
        "--target-sequence-length", 4, "--kl-coeff", 0.1,
    ]  # fmt: skip
    done = tunelab(*args, home=tunelab_home)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "tuned model 'cli-rft' version 1" in out
    assert "pass rate: base" in out and "mean reward: base" in out
    shown = json.loads(tunelab("models", "show", "cli-rft", "--json", home=tunelab_home).stdout)
    assert shown["method"] == "rft" and shown["config"]["grader"]["type"] == "weighted_sum"


def test_graders_test_dry_run(tmp_path, tiny_model_dir, tunelab_home):
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [json.loads(x) for x in (EXAMPLE / "validation.jsonl").read_text().splitlines()[:6]],
    )
    args = ["graders", "test", EXAMPLE / "grader.json", "--data", data, "--base", tiny_model_dir]
    done = tunelab(*args, "--prompts", 2, "--samples-per-prompt", 3, "--max-output-tokens", 4,
                   "--json", home=tunelab_home)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    refs = result["references"]
    assert refs["count"] == 6 and refs["pass_rate"] == 1.0 and refs["mean"] == 1.0
    samples = result["base_samples"]
    assert samples["count"] == 6 and samples["prompts"] == 2 and 0 <= samples["mean"] < 1
    assert sum(samples["histogram"]["counts"]) == 6

    shown = tunelab(*args, "--prompts", 0, home=tunelab_home)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "references (field 'reference'): n=6 mean 1.000" in shown.stdout + shown.stderr


def test_a_bad_grader_file_is_refused_saying_where(tmp_path, tunelab_home):
    data = shutil.copy(EXAMPLE / "validation.jsonl", tmp_path / "v.jsonl")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "any", "graders": [{"type": "numeric"}]}))
    done = tunelab("graders", "test", bad, "--data", data, "--prompts", 0, home=tunelab_home)
    assert done.returncode == 1
    assert "grader.graders.0.reference: Field required" in done.stdout + done.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "numeric",\n "reference": }')
    done = tunelab("tune", "rft", "--train", data, "--grader", broken, "--name", "x",
                   home=tunelab_home)  # fmt: skip
    assert done.returncode == 1 and "not JSON" in done.stdout + done.stderr
    assert "line 2" in done.stdout + done.stderr

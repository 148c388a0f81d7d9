"""Killing a run (SIGKILL, or Ctrl-C) and running the same command again ends with the same
adapter as a run that was never interrupted. Real processes, real signals: the test waits on
the run's own metrics file, never on a sleep standing in for progress."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import write_jsonl

from tunelab.training.precision import resolve_precision

STEPS = 120
PRECISION = resolve_precision("auto", 512)
"""What ``auto`` picks on this machine, decided once here: each process of a run measures anew
(a resumed run then keeps its checkpoint's), so on a loaded machine the uninterrupted run and
the stopped one could decide differently and train differently, which is not what this tests."""


def long_rows(n):
    # Long prompts make each step slow enough (~0.1 s) to be caught mid-run.
    filler = " ".join(f"word{i}" for i in range(150))
    return [
        {"input_text": f"{filler} item {i}", "output_text": ["yes", "no"][i % 2]} for i in range(n)
    ]


def command(train, model_dir):
    return [
        sys.executable, "-m", "tunelab.cli", "tune", "sft",
        "--train", str(train), "--name", "resume-test", "--base", str(model_dir),
        "--train-steps", str(STEPS), "--batch-size", "4", "--checkpoint-every-steps", "10",
        "--learning-rate-multiplier", "5", "--seed", "3", "--precision", PRECISION,
    ]  # fmt: skip


def run_to_completion(cmd, home):
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return home


def adapter_of(home):
    """The registered adapter of the tuned model, through the registry of that home."""
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    shown = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "models", "show", "resume-test", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    adapter = Path(json.loads(shown.stdout)["adapter_uri"])
    return load_file(adapter / "adapter_model.safetensors"), adapter


def start_and_stop_midway(cmd, home, sig):
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    metrics = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(home.glob("work/job-*/metrics.jsonl"))
        if found:
            metrics = found[0]
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip()]
            if steps and steps[-1] >= 25:
                proc.send_signal(sig)
                break
        time.sleep(0.02)  # polling interval of the wait on the metrics file
    proc.wait(timeout=120)
    assert metrics is not None, "the run never started training"
    assert not (metrics.parent / "adapter").exists(), "the run finished before it could be stopped"
    return proc.returncode


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    train = write_jsonl(tmp / "train.jsonl", long_rows(40))
    home = run_to_completion(command(train, tiny_model_dir), tmp / "home")
    return adapter_of(home)[0]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_stopped_run_resumes_to_the_same_adapter(tmp_path, tiny_model_dir, uninterrupted, sig):
    home = tmp_path / "home"
    cmd = command(tmp_path / "train.jsonl", tiny_model_dir)
    write_jsonl(tmp_path / "train.jsonl", long_rows(40))
    code = start_and_stop_midway(cmd, home, sig)
    assert code == (-9 if sig == signal.SIGKILL else 130)
    ckpts = list(home.glob("work/job-*/checkpoints/step-*"))
    assert ckpts, "no checkpoint survived the stop"

    run_to_completion(cmd, home)
    resumed, adapter = adapter_of(home)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=1e-6)
    rows = [json.loads(x) for x in (adapter / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one row per step, no replays

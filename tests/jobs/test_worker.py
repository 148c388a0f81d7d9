"""Workers as real processes with real signals: SIGKILL mid-training resumes on the next worker
to the same adapter; SIGTERM requeues with a checkpoint; cancel stops within seconds; pause keeps
the checkpoint and resume continues it. The tests wait on the job's own state and metrics, with
deadlines, never on sleeps standing in for progress."""

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

from tunelab.configs import SFTConfig
from tunelab.jobs import store
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.registry.models import adapter_artifact, get_version


def long_rows(n):
    filler = " ".join(f"word{i}" for i in range(150))
    return [
        {"input_text": f"{filler} item {i}", "output_text": ["yes", "no"][i % 2]} for i in range(n)
    ]


def config(model_dir, steps):
    return SFTConfig(
        base_model=str(model_dir),
        train_steps=steps,
        batch_size=4,
        checkpoint_every_steps=10,
        learning_rate_multiplier=5,
        seed=3,
        # The workers are other processes: with "auto" each measures bf16 against fp32 itself,
        # and on a busy machine they may choose differently from the reference run.
        precision="fp32",
    )


def start_worker(home_env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "worker", *args],
        env=home_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout=900, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling interval; the condition is the job's real state
    raise AssertionError(f"timed out waiting for {what}")


def trained_steps(home, job_id):
    path = home / "work" / job_id / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in path.read_text().splitlines() if x.strip()]
    return steps[-1] if steps else 0


def adapter_weights(services, name):
    version = get_version(services.db, name)
    return load_file(Path(adapter_artifact(services.db, version).uri) / "adapter_model.safetensors")


@pytest.fixture
def db_url(tmp_path):
    """Worker processes on SQLite; the PostgreSQL claim and lease logic is covered by the store
    tests, which run on both (two minutes of process tests per backend is CI time better spent)."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


@pytest.fixture
def env(services, tunelab_home, monkeypatch):
    monkeypatch.setenv("TUNELAB_LEASE_SECONDS", "3")
    return {**os.environ}


KILL_RUN_STEPS = 60
"""The killed job's length: killed past step 25 (last checkpoint 20), it resumes for 40 more,
and the kill still lands mid-run with 35 steps to spare (the test polls every 50 ms)."""


def test_sigkilled_worker_is_resumed_by_the_next_to_the_same_adapter(
    services, env, tunelab_home, tmp_path, tiny_model_dir
):
    train = write_jsonl(tmp_path / "train.jsonl", long_rows(40))
    reference, _ = submit_job(
        services.db,
        services.artifacts,
        config=config(tiny_model_dir, KILL_RUN_STEPS),
        name="reference",
        datasets={"train": train},
    )
    assert Worker(services.db, services.artifacts).run_job(reference.id).state == "SUCCEEDED"

    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=config(tiny_model_dir, KILL_RUN_STEPS),
        name="killed",
        datasets={"train": train},
    )
    first = start_worker(env)
    wait_for(lambda: trained_steps(tunelab_home, job.id) >= 25, what="training to pass step 25")
    first.send_signal(signal.SIGKILL)
    first.wait(60)
    assert store.get_job(services.db, job.id).state == "RUNNING"  # left behind by the dead worker
    assert list((tunelab_home / "work" / job.id / "checkpoints").glob("step-*"))

    second = start_worker(env, "--once")
    assert second.wait(600) == 0, second.stderr.read()[-2000:]
    done = store.get_job(services.db, job.id)
    assert done.state == "SUCCEEDED"
    assert any("reclaimed" in e.message for e in store.events_of(services.db, job.id))
    expected, resumed = adapter_weights(services, "reference"), adapter_weights(services, "killed")
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)
    steps = [r["step"] for r in store.metrics_of(services.db, job.id) if "train_loss" in r]
    assert steps == list(range(1, KILL_RUN_STEPS + 1))


def test_sigterm_requeues_cancel_is_fast_pause_and_resume_continue(
    services, env, tunelab_home, tmp_path, tiny_model_dir
):
    train = write_jsonl(tmp_path / "train.jsonl", long_rows(40))
    # SIGTERM: checkpoint, give the job back to the queue, exit cleanly.
    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=config(tiny_model_dir, 100_000),
        name="long",
        datasets={"train": train},
    )
    worker = start_worker(env)
    wait_for(lambda: trained_steps(tunelab_home, job.id) >= 5, what="training to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    requeued = store.get_job(services.db, job.id)
    assert requeued.state == "QUEUED" and requeued.worker_id is None
    assert list((tunelab_home / "work" / job.id / "checkpoints").glob("step-*"))

    # Cancel a running job: it stops within seconds.
    worker = start_worker(env)
    wait_for(
        lambda: (
            store.get_job(services.db, job.id).state == "RUNNING"
            and trained_steps(tunelab_home, job.id) >= 15
        ),
        what="training to continue",
    )
    asked = time.monotonic()
    store.request_cancel(services.db, job.id)
    wait_for(
        lambda: store.get_job(services.db, job.id).state == "CANCELLED", timeout=60, what="cancel"
    )
    assert time.monotonic() - asked < 10

    # Pause keeps the checkpoint; resume continues from it to the end.
    paused_job, _ = submit_job(
        services.db,
        services.artifacts,
        config=config(tiny_model_dir, 120),
        name="paused",
        datasets={"train": train},
    )
    wait_for(
        lambda: trained_steps(tunelab_home, paused_job.id) >= 25, what="training to pass step 25"
    )
    store.request_pause(services.db, paused_job.id)
    wait_for(
        lambda: store.get_job(services.db, paused_job.id).state == "PAUSED",
        timeout=60,
        what="pause",
    )
    at_pause = trained_steps(tunelab_home, paused_job.id)
    assert 25 <= at_pause < 120
    store.resume(services.db, paused_job.id)
    wait_for(
        lambda: store.get_job(services.db, paused_job.id).state == "SUCCEEDED",
        what="resumed job to finish",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    steps = [r["step"] for r in store.metrics_of(services.db, paused_job.id) if "train_loss" in r]
    assert steps == list(range(1, 121))

"""What goes wrong, and what is kept: a kill during a checkpoint write falls back to the previous
checkpoint; a full disk fails the job clearly and leaves the last checkpoint intact; bad data
fails at once with its line numbers; transient errors are retried a bounded number of times."""

import errno
import json
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from support import write_jsonl

from tunelab.configs import SFTConfig
from tunelab.jobs import store
from tunelab.jobs.methods import METHODS, DatasetRole, MethodSpec
from tunelab.jobs.pipeline import PipelineDef
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import RunOutcome, Worker
from tunelab.training.checkpoint import list_checkpoints, load_latest


def test_sigkill_during_checkpoint_write_falls_back_to_the_previous(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, torch
        import tunelab.training.checkpoint as ck
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 4)
        opt = torch.optim.AdamW(model.parameters())
        model(torch.randn(2, 4)).sum().backward(); opt.step()
        ck.save_checkpoint(ck.Path({str(tmp_path)!r}), model, opt, ck.LoopState(step=10))
        torch.save  # noqa
        real = ck.save_file
        def dying(tensors, path, *a, **k):
            real(tensors, path, *a, **k)
            if str(path).endswith("optimizer.safetensors"):
                os.kill(os.getpid(), signal.SIGKILL)  # mid-checkpoint: weights written, rest not
        ck.save_file = dying
        with torch.no_grad():
            model.weight.add_(1.0)
        ck.save_checkpoint(ck.Path({str(tmp_path)!r}), model, opt, ck.LoopState(step=20))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"]
    model = torch.nn.Linear(4, 4)
    state = load_latest(tmp_path, model, torch.optim.AdamW(model.parameters()))
    assert state.step == 10


def _rows(n=24):
    return [
        {"input_text": f"item {i}: the {c} one", "output_text": c}
        for i, c in zip(range(n), ["red", "green", "blue", "yellow"] * n, strict=False)
    ]


def test_full_disk_fails_the_job_and_keeps_the_last_checkpoint(
    services, tunelab_home, tmp_path, tiny_model_dir, monkeypatch
):
    import tunelab.training.checkpoint as ck

    real, calls = ck.save_file, {"n": 0}

    def disk_fills_up(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # the first checkpoint (3 files) fits; the second does not
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ck, "save_file", disk_fills_up)
    train = write_jsonl(tmp_path / "train.jsonl", _rows())
    cfg = SFTConfig(base_model=str(tiny_model_dir), train_steps=30, checkpoint_every_steps=10)
    job, _ = submit_job(
        services.db, services.artifacts, config=cfg, name="full", datasets={"train": train}
    )
    outcome = Worker(services.db, services.artifacts).run_job(job.id)
    assert outcome.state == "FAILED"
    failed = store.get_job(services.db, job.id)
    assert failed.error["code"] == "disk_full"
    assert (
        "no space left" in failed.error["message"]
        and "previous checkpoint is intact" in failed.error["message"]
    )
    assert failed.attempts == 1  # not retried: it would fail the same way
    ckpt_dir = tunelab_home / "work" / job.id / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-00000010"]
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]  # no half-written folder
    monkeypatch.setattr(ck, "save_file", real)
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_causal_lm

    model = get_peft_model(
        load_causal_lm(tiny_model_dir),
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    assert load_latest(ckpt_dir, model, torch.optim.AdamW(params)).step == 10


def test_bad_data_fails_at_once_with_line_numbers(services, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"input_text": "a", "output_text": "b"})
    bad.write_text("\n".join([good, "{oops", good, json.dumps({"input_text": "a"}), good]) + "\n")
    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=SFTConfig(base_model=str(tiny_model_dir)),
        name="bad",
        datasets={"train": bad},
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "FAILED"
    failed = store.get_job(services.db, job.id)
    assert failed.error["code"] == "invalid_dataset" and failed.attempts == 1
    assert [e["line"] for e in failed.error["details"]["errors"]] == [2, 4]
    steps = {s.name: s.state for s in store.steps_of(services.db, job.id)}
    assert steps["validate"] == "FAILED" and steps["train"] == "PENDING"


def test_transient_errors_are_retried_a_bounded_number_of_times(services, tmp_path, monkeypatch):
    attempts = []

    def flaky(ctx):
        attempts.append(ctx.job.id)
        raise ConnectionError("object store unreachable")

    class Flaky(SFTConfig):
        method: str = "flaky-test"

    # A method of its own, added to the one method table as a real method is.
    module = types.ModuleType("flaky_test_pipeline")
    module.PIPELINE = PipelineDef("flaky-test", (("validate", flaky),), {"validate": 1.0})
    monkeypatch.setitem(sys.modules, module.__name__, module)
    roles = (DatasetRole("train", "rows", required=True),)
    monkeypatch.setitem(METHODS, "flaky-test", MethodSpec(Flaky, roles, module.__name__, ()))

    train = write_jsonl(tmp_path / "t.jsonl", _rows())
    job, _ = submit_job(
        services.db, services.artifacts, config=Flaky(), name="flaky", datasets={"train": train}
    )
    worker = Worker(services.db, services.artifacts, max_attempts=3)
    assert worker.run_forever(poll_seconds=0.01, max_jobs=3) == 3
    failed = store.get_job(services.db, job.id)
    assert failed.state == "FAILED" and failed.attempts == 3 and len(attempts) == 3
    assert (
        failed.error["code"] == "internal" and "object store unreachable" in failed.error["message"]
    )
    assert store.claim(services.db, "host:9:z", 60) is None  # nothing left to retry


def test_a_failure_while_cancelling_ends_the_job_cancelled(services, tmp_path, monkeypatch):
    """A run that errors as it is being cancelled (its processes torn down under it) ends
    CANCELLED; the worker used to try to requeue it (an illegal CANCELLING -> QUEUED), which
    raised out of its loop and stopped it taking further jobs."""

    def cancelled_then_broken(ctx):
        store.request_cancel(ctx.db, ctx.job.id)
        raise ConnectionError("a training process went away")

    class Broken(SFTConfig):
        method: str = "broken-test"

    module = types.ModuleType("broken_test_pipeline")
    module.PIPELINE = PipelineDef(
        "broken-test", (("validate", cancelled_then_broken),), {"validate": 1.0}
    )
    monkeypatch.setitem(sys.modules, module.__name__, module)
    roles = (DatasetRole("train", "rows", required=True),)
    monkeypatch.setitem(METHODS, "broken-test", MethodSpec(Broken, roles, module.__name__, ()))
    train = write_jsonl(tmp_path / "t.jsonl", _rows())
    first, _ = submit_job(
        services.db, services.artifacts, config=Broken(), name="one", datasets={"train": train}
    )
    second, _ = submit_job(
        services.db, services.artifacts, config=SFTConfig(), name="two", datasets={"train": train}
    )
    worker = Worker(services.db, services.artifacts, max_attempts=3)
    outcome = worker.run_job(first.id)
    assert outcome == RunOutcome(first.id, "CANCELLED")
    assert store.get_job(services.db, first.id).state == "CANCELLED"
    events = [e.message for e in store.events_of(services.db, first.id)]
    assert any("while stopping" in m for m in events), events
    assert store.get_job(services.db, second.id).state == "QUEUED"  # untouched, still claimable


@pytest.mark.parametrize("price", [None, "0.008"])
def test_usage_is_recorded(services, tmp_path, tiny_model_dir, monkeypatch, price):
    if price:
        monkeypatch.setenv("TUNELAB_PRICE_PER_1K_TOKENS", price)
    train = write_jsonl(tmp_path / "train.jsonl", _rows())
    cfg = SFTConfig(base_model=str(tiny_model_dir), epochs=2)
    job, _ = submit_job(
        services.db, services.artifacts, config=cfg, name="usage", datasets={"train": train}
    )
    Worker(services.db, services.artifacts).run_job(job.id)
    usage = store.get_job(services.db, job.id).usage
    report = store.steps_of(services.db, job.id)[0].outputs["reports"]["train"]
    dataset_tokens = report["total_tokens"]
    assert usage["billable_tokens"] == 2 * dataset_tokens  # tokens x epochs, as Vertex bills
    # Trained tokens mean what the data report means (model turns), times the epochs; every
    # token the batches carried is processed_tokens. Trained never exceeds billable.
    assert usage["trained_tokens"] == 2 * report["trained_tokens"] < usage["billable_tokens"]
    assert usage["processed_tokens"] == 2 * dataset_tokens
    assert usage["wall_seconds"] > 0 and usage["cpu_seconds"] > 0 and usage["peak_rss_mb"] > 0
    if price:
        assert usage["estimated_cost"] == pytest.approx(usage["billable_tokens"] / 1000 * 0.008)
    else:
        assert usage["estimated_cost"] is None


def test_a_cancel_between_claim_and_start_cancels_the_job_and_the_worker_goes_on(
    services, tmp_path, tiny_model_dir
):
    """A cancel that lands after a worker claimed a job (PENDING -> CANCELLING) but before the
    job started running ends it CANCELLED; the worker used to raise out of its loop on the
    illegal CANCELLING -> RUNNING move, leaving the job CANCELLING and the queue unserved."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"input_text": "a", "output_text": "b"}] * 4)
    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=SFTConfig(base_model=str(tiny_model_dir), train_steps=1),
        name="cancelled-early",
        datasets={"train": train},
    )
    worker = Worker(services.db, services.artifacts)
    claimed = store.claim(services.db, worker.id, worker.lease_seconds, job_id=job.id)
    assert claimed.state == "PENDING"
    assert store.request_cancel(services.db, job.id).state == "CANCELLING"
    outcome = worker.run_claimed(claimed)
    assert outcome.state == "CANCELLED"
    assert store.get_job(services.db, job.id).state == "CANCELLED"
    assert not store.steps_of(services.db, job.id) or all(
        s.state != "RUNNING" for s in store.steps_of(services.db, job.id)
    )

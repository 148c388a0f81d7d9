"""Data-parallel training on CPU with gloo: 2 processes x 4 examples train the adapter 1 process
x 8 does, also as two machines (two processes on loopback); a rank killed with SIGKILL fails the
run (no hang) which then resumes from its last checkpoint to the same adapter; a rank that dies
before joining fails it at once. Real processes, started the way a job starts them."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from support import color_rows, free_port, write_jsonl

from tunelab.configs import SFTConfig
from tunelab.recipes.sft import train_sft
from tunelab.training import launch
from tunelab.training.distributed import RankFailed, join_group
from tunelab.training.launch import run_recipe

STEPS = 6


@pytest.fixture(autouse=True)
def short_collective_timeout(monkeypatch):
    # A broken test must fail, not wait the default 10 minutes in a collective.
    monkeypatch.setenv("TUNELAB_COLLECTIVE_TIMEOUT", "60")


def config(tiny_model_dir, **overrides):
    return SFTConfig(
        base_model=str(tiny_model_dir),
        train_steps=STEPS,
        batch_size=8,  # 20 examples: batches of 8, 8 and 4, so shares differ in size
        learning_rate_multiplier=10.0,
        eval_every_steps=3,
        checkpoint_every_steps=3,
        seed=7,
        precision="fp32",  # bf16 rounding would differ between the two layouts
        **overrides,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return (
        write_jsonl(folder / "train.jsonl", color_rows(20)),
        write_jsonl(folder / "val.jsonl", color_rows(8, offset=100)),
    )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir, data):
    train, val = data
    return train_sft(config(tiny_model_dir), train, tmp_path_factory.mktemp("one") / "run", val)


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_same_adapter(a_dir: Path, b_dir: Path) -> None:
    a = load_file(a_dir / "adapter_model.safetensors")
    b = load_file(b_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(a[k].abs().max() for k in a if "lora_B" in k) > 1e-3  # it trained
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_two_processes_train_the_adapter_one_process_trains(
    tmp_path, tiny_model_dir, data, one_process
):
    train, val = data
    seen = []
    result = run_recipe(
        train_sft,
        config(tiny_model_dir, processes=2),
        train,
        tmp_path / "run",
        val,
        processes=2,
        on_progress=seen.append,
    )
    assert result.steps == STEPS
    assert_same_adapter(one_process.adapter_dir, result.adapter_dir)

    # The logged numbers are the whole batch's (both ranks'), written once by rank 0.
    one, two = rows(one_process.adapter_dir), rows(result.adapter_dir)
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "train_accuracy", "eval_loss", "tokens"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), key
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    assert manifest["usage"]["processes"] == 2
    assert manifest["usage"]["trained_tokens"] == one_process.usage["trained_tokens"]
    assert [p.step for p in seen if p.phase == "training"] == list(range(1, STEPS + 1))


def _ranks_started_by_us() -> list[int]:
    """The pids of the training processes this (rank 0) process started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"tunelab.training.launch" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def test_a_killed_rank_fails_the_run_and_resume_ends_with_the_same_adapter(
    tmp_path, tiny_model_dir, data, one_process
):
    train, val = data
    run_dir = tmp_path / "run"
    killed = []

    def kill_rank_1_after_step_4(progress) -> None:
        if progress.phase == "training" and progress.step == 4 and not killed:
            (pid,) = _ranks_started_by_us()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    cfg = config(tiny_model_dir, processes=2)
    with pytest.raises(RankFailed, match="start the job again"):
        run_recipe(
            train_sft, cfg, train, run_dir, val, processes=2, on_progress=kill_rank_1_after_step_4
        )
    assert killed and not (run_dir / "adapter").exists()
    assert (run_dir / "checkpoints" / "step-00000003").is_dir()

    resumed = run_recipe(train_sft, cfg, train, run_dir, val, processes=2)
    assert resumed.resumed_from_step == 3 and resumed.steps == STEPS
    assert_same_adapter(one_process.adapter_dir, resumed.adapter_dir)
    assert [r["step"] for r in rows(resumed.adapter_dir) if "train_loss" in r] == list(
        range(1, STEPS + 1)
    )


def test_two_machines_on_loopback_train_the_adapter_one_process_trains(
    tmp_path, tiny_model_dir, data, one_process
):
    """Machine 0 is the job's process (as the job's train step calls it); machine 1 is
    `tunelab tune sft ... --node-rank 1`, the command an operator runs on the second machine."""
    train, val = data
    port = free_port()
    cfg = config(tiny_model_dir, nodes=2, master_addr="127.0.0.1", master_port=port)
    same_config = [
        "--base", str(tiny_model_dir), "--train-steps", str(STEPS), "--batch-size", "8",
        "--learning-rate-multiplier", "10", "--eval-every-steps", "3",
        "--checkpoint-every-steps", "3", "--seed", "7", "--precision", "fp32",
        "--nodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
    ]  # fmt: skip
    machine_1 = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "tune", "sft", "--train", str(train)]
        + ["--validation", str(val), "--name", "two-machines", "--node-rank", "1", *same_config],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        result = run_recipe(train_sft, cfg, train, tmp_path / "run", val, **cfg.parallel_fields())
        out, _ = machine_1.communicate(timeout=120)
    finally:
        if machine_1.poll() is None:
            machine_1.kill()
    assert machine_1.returncode == 0, out
    assert_same_adapter(one_process.adapter_dir, result.adapter_dir)
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    assert manifest["usage"]["processes"] == 2


def test_a_rank_that_dies_before_joining_fails_the_run_at_once(
    tmp_path, tiny_model_dir, data, monkeypatch
):
    """A rank that cannot start (an import error, a bad environment, no memory) used to leave
    rank 0 waiting for it in the rendezvous for the whole collective timeout."""
    monkeypatch.setenv("TUNELAB_COLLECTIVE_TIMEOUT", "120")
    broken = tmp_path / "python"  # what the rank is started with: dies after a second
    broken.write_text("#!/bin/sh\nsleep 1\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(launch.sys, "executable", str(broken))
    train, val = data
    start = time.monotonic()
    with pytest.raises(RankFailed, match=r"rank 1 exited \(code 3\) before joining"):
        run_recipe(
            train_sft, config(tiny_model_dir, processes=2), train, tmp_path / "run", processes=2
        )
    assert time.monotonic() - start < 20
    assert not (tmp_path / "run").exists()


def test_a_rank_dying_before_joining_on_another_machine_fails_every_machine_at_once(
    monkeypatch,
):
    """Machine 1's first rank (2) watches its own rank 3, which dies: it tells the group's store,
    and rank 0, waiting on machine 0 for everyone, stops waiting too."""
    monkeypatch.setenv("TUNELAB_COLLECTIVE_TIMEOUT", "30")
    port, errors = free_port(), {}

    def machine(rank: int, watched: dict) -> None:
        try:
            join_group(rank, 4, "127.0.0.1", port, watch=watched)
        except RankFailed as exc:
            errors[rank] = str(exc)

    running, died = SimpleNamespace(poll=lambda: None), SimpleNamespace(poll=lambda: 4)
    threads = [
        threading.Thread(target=machine, args=(0, {1: running})),
        threading.Thread(target=machine, args=(2, {3: died})),
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert time.monotonic() - start < 10
    assert set(errors) == {0, 2}
    assert all("rank 3 exited (code 4) before joining" in e for e in errors.values())


@pytest.mark.parametrize("n, size", [(8, 2), (5, 2), (7, 3), (1, 2), (3, 4)])
def test_shares_cover_the_batch_in_order_and_differ_by_at_most_one(n, size):
    from tunelab.training.distributed import World, share

    items = list(range(100, 100 + n))
    shares = [share(items, World(r, size)) for r in range(size)]
    real = [part for part, is_real in shares if is_real]
    assert sum(real, []) == items  # rank order is batch order: gathered rows line up
    assert max(map(len, real)) - min(map(len, real)) <= 1
    for part, is_real in shares:  # a rank left without examples computes one, weighted 0
        assert is_real or part == items[:1]
    assert sum(is_real for _, is_real in shares) == min(n, size)

"""Data-parallel training on CPU with gloo: 2 processes x 4 examples train the adapter 1 process
x 8 does, and a rank killed with SIGKILL fails the run (no hang) which then resumes from its last
checkpoint to the same adapter. Real processes, started the way a job starts them."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import color_rows, write_jsonl

from tunelab.configs import SFTConfig
from tunelab.recipes.sft import train_sft
from tunelab.training.distributed import RankFailed
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

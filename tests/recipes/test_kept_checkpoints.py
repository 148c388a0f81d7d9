"""Kept checkpoints: the last N candidate steps and the best by validation loss survive the
run as verified adapter bundles with their metrics; the rest are removed."""

import json

import pytest
import torch
from safetensors.torch import load_file
from support import color_rows, write_jsonl

from tunelab.bundle import verify_adapter_bundle
from tunelab.configs import SFTConfig
from tunelab.recipes.sft import train_sft
from tunelab.training.kept import chosen


def test_chosen_is_the_last_n_and_the_best():
    candidates = [
        (4, {"eval_loss": 2.0}),
        (8, {"eval_loss": 1.0}),
        (12, {"eval_loss": 1.5}),
        (16, {"eval_loss": 1.7}),
        (20, {"eval_loss": 1.0}),
    ]
    assert chosen(candidates, 2) == {16, 20, 8}  # the best tie goes to the earliest
    assert chosen(candidates, 5) == {4, 8, 12, 16, 20}
    assert chosen([(4, {}), (8, {"train_loss": 0.1})], 1) == {8}  # no validation: last only
    assert chosen(candidates, 0) == set()


def test_keeps_the_last_two_and_the_best_as_bundles(tmp_path, tiny_model_dir, color_data):
    train, _ = color_data
    unseen = ["purple", "orange", "silver", "black"]
    other = [{**r, "output_text": unseen[i % 4]} for i, r in enumerate(color_rows(16, 1000))]
    val = write_jsonl(tmp_path / "unseen.jsonl", other)
    cfg = SFTConfig(
        base_model=str(tiny_model_dir),
        train_steps=40,
        batch_size=8,
        eval_every_steps=4,
        checkpoint_every_steps=4,
        learning_rate_multiplier=40.0,
        early_stopping_patience=None,
        warmup_ratio=0.0,
        seed=7,
        keep_checkpoints=2,
    )
    result = train_sft(cfg, train, tmp_path / "run", val)
    assert result.best_step is not None and result.best_step < 36  # the case under test
    steps = [c["step"] for c in result.checkpoints]
    assert steps == sorted({result.best_step, 36, 40})
    on_disk = sorted(p.name for p in (tmp_path / "run" / "kept").iterdir())
    assert on_disk == [f"step-{s:08d}" for s in steps]  # the others were removed

    for c in result.checkpoints:
        manifest = verify_adapter_bundle(c["dir"])
        assert manifest["checkpoint"]["step"] == c["step"] == manifest["steps"]
        assert c["epoch"] == round(c["step"] / 6, 4)  # 48 examples, batch 8: 6 steps an epoch
        assert {"train_loss", "train_accuracy", "eval_loss", "eval_accuracy"} <= c["metrics"].keys()
    rows = [json.loads(x) for x in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    for c in result.checkpoints:
        assert c["metrics"]["eval_loss"] == evals[c["step"]]

    final = load_file(result.adapter_dir / "adapter_model.safetensors")
    by_step = {
        c["step"]: load_file(c["dir"] / "adapter_model.safetensors") for c in result.checkpoints
    }
    # The final adapter is the best step's; the last step's weights differ from it.
    assert all((final[k] == by_step[result.best_step][k]).all() for k in final)
    assert any((final[k] != by_step[40][k]).any() for k in final)


def test_keep_zero_keeps_none(tmp_path, tiny_model_dir, color_data):
    train, val = color_data
    cfg = SFTConfig(
        base_model=str(tiny_model_dir),
        train_steps=4,
        batch_size=8,
        checkpoint_every_steps=2,
        keep_checkpoints=0,
    )
    result = train_sft(cfg, train, tmp_path / "run", val)
    assert result.checkpoints == [] and not (tmp_path / "run" / "kept").exists()


class Crash(RuntimeError):
    pass


def test_a_crashed_run_resumes_to_the_same_kept_checkpoints(tmp_path, tiny_model_dir, color_data):
    """A crash after step 7 (resume checkpoint at 4; kept 3, 4 and 6 already written) and the
    same run again: the kept steps, their weights and metrics are those of an uninterrupted run."""
    train, val = color_data
    cfg = SFTConfig(
        base_model=str(tiny_model_dir),
        train_steps=12,
        batch_size=8,
        eval_every_steps=3,
        checkpoint_every_steps=4,
        learning_rate_multiplier=10.0,
        early_stopping_patience=None,
        keep_checkpoints=2,
        seed=3,
    )
    whole = train_sft(cfg, train, tmp_path / "whole", val)

    def crash_at_7(p):
        if p.phase == "training" and p.step == 7:
            raise Crash

    with pytest.raises(Crash):
        train_sft(cfg, train, tmp_path / "crashed", val, on_progress=crash_at_7)
    written = sorted(p.name for p in (tmp_path / "crashed" / "kept").iterdir())
    assert "step-00000006" in written  # past the resume checkpoint at 4
    resumed = train_sft(cfg, train, tmp_path / "crashed", val)

    assert resumed.resumed_from_step == 4
    assert [c["step"] for c in resumed.checkpoints] == [c["step"] for c in whole.checkpoints]
    for a, b in zip(resumed.checkpoints, whole.checkpoints, strict=True):
        assert a["metrics"].keys() == b["metrics"].keys()
        assert a["metrics"]["eval_loss"] == pytest.approx(b["metrics"]["eval_loss"], abs=1e-6)
        wa = load_file(a["dir"] / "adapter_model.safetensors")
        wb = load_file(b["dir"] / "adapter_model.safetensors")
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)


def test_resume_clears_interrupted_writes_and_later_checkpoints(tmp_path):
    from tunelab.training.kept import drop_after, list_kept

    kept = tmp_path / "kept"
    (kept / ".step-00000010.tmp-x").mkdir(parents=True)  # a write a crash interrupted
    for name in ("step-00000020.old", "step-00000030"):  # mid-replacement; past the resume
        (kept / name).mkdir()
        (kept / name / "manifest.json").write_text("{}")
    drop_after(tmp_path, 20)
    assert sorted(p.name for p in kept.iterdir()) == ["step-00000020"]
    assert [s for s, _ in list_kept(tmp_path)] == [20]

"""Supervised tuning end to end on a tiny model: it learns, writes the exact bundle, reloads
identically, keeps the best checkpoint, and refuses bad data before training."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from support import color_rows, write_jsonl

from tunelab.configs import SFTConfig
from tunelab.data.validation import DatasetValidationError, load_supervised
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.recipes.sft import train_sft
from tunelab.training.eval_loss import evaluate


def tiny_config(tiny_model_dir, **overrides):
    values = dict(
        base_model=str(tiny_model_dir),
        train_steps=24,
        batch_size=8,
        learning_rate_multiplier=10.0,
        eval_every_steps=8,
        checkpoint_every_steps=8,
        seed=7,
    )
    values.update(overrides)
    return SFTConfig(**values)


@pytest.fixture(scope="module")
def colors_run(tmp_path_factory, tiny_model_dir):
    """One 24-step run of the colour task with validation, read by the two tests below (each
    trained its own, identical, run): (run folder, result, validation file)."""
    root = tmp_path_factory.mktemp("sft-colors")
    train = write_jsonl(root / "train.jsonl", color_rows(48))
    val = write_jsonl(root / "val.jsonl", color_rows(16, offset=1000))  # as conftest's color_data
    return root / "run", train_sft(tiny_config(tiny_model_dir), train, root / "run", val), val


def test_tiny_model_learns_and_writes_the_bundle(colors_run):
    run, result, _ = colors_run

    rows = [
        json.loads(line) for line in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()
    ]
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    eval_losses = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(train_losses) == 24 and len(eval_losses) == 3
    assert sum(train_losses[-4:]) / 4 < 0.5 * sum(train_losses[:4]) / 4
    assert eval_losses[-1] < eval_losses[0]
    assert {"tokens_per_second", "learning_rate", "train_accuracy"} <= rows[0].keys()
    assert {"eval_accuracy"} <= next(r for r in rows if "eval_loss" in r).keys()

    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "tuning_config.json",
        "data_stats.json",
        "metrics.jsonl",
        "loss_curve.png",
        "manifest.json",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    stats = json.loads((result.adapter_dir / "data_stats.json").read_text())
    assert manifest["datasets"]["train"] == stats["train"]["sha256"]
    assert manifest["files"]["adapter_model.safetensors"]
    assert manifest["usage"]["trained_tokens"] > 0
    assert (result.adapter_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "checkpoints").exists()  # nothing left to resume


def test_reloaded_adapter_gives_the_recorded_eval_loss(tiny_model_dir, colors_run):
    """The bundle holds the best evaluated adapter: reloading it reproduces that evaluation."""
    _, result, val = colors_run
    tokenizer = load_tokenizer(result.adapter_dir)
    examples, _ = load_supervised(val, tokenizer, max_seq_length=1024)
    model = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), result.adapter_dir)
    again = evaluate(
        model,
        model.get_decoder(),
        model.get_output_embeddings(),
        examples,
        8,
        tokenizer.pad_token_id,
    )
    assert again["eval_loss"] == pytest.approx(result.best_eval_loss, rel=1e-5)


def test_keeps_the_best_checkpoint_not_the_last(tmp_path, tiny_model_dir, color_data):
    """A high learning rate and a validation set whose answers training never shows: as the
    adapter commits to the training labels, eval loss rises after its first evaluations. The
    bundle is the best evaluated step's adapter, not the last."""
    train, _ = color_data
    unseen = ["purple", "orange", "silver", "black"]
    other = [{**r, "output_text": unseen[i % 4]} for i, r in enumerate(color_rows(16, 1000))]
    val = write_jsonl(tmp_path / "unseen.jsonl", other)
    cfg = tiny_config(
        tiny_model_dir,
        train_steps=40,
        eval_every_steps=4,
        learning_rate_multiplier=40.0,
        early_stopping_patience=None,
        warmup_ratio=0.0,
    )
    result = train_sft(cfg, train, tmp_path / "run", val)
    best = load_file(tmp_path / "run" / "best" / "trainable.safetensors")
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    # PEFT drops the adapter name from saved keys; compare by the tail of each key.
    by_tail = {k.split("base_model.model.")[-1].replace(".default", ""): v for k, v in best.items()}
    for key, tensor in saved.items():
        assert torch.equal(tensor, by_tail[key.split("base_model.model.")[-1]])
    rows = [json.loads(x) for x in (result.adapter_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    assert result.best_step == min(evals, key=evals.get)
    assert result.best_step < max(evals)  # the case under test: the last evaluation was worse


def test_early_stopping_ends_the_run(tmp_path, tiny_model_dir, color_data):
    train, val = color_data
    cfg = tiny_config(
        tiny_model_dir,
        train_steps=200,
        eval_every_steps=2,
        learning_rate_multiplier=80.0,
        early_stopping_patience=2,
        warmup_ratio=0.0,
    )
    result = train_sft(cfg, train, tmp_path / "run", val)
    assert result.stopped_early and result.steps < 200


def test_same_seed_same_adapter(tmp_path, tiny_model_dir, color_data):
    train, _ = color_data
    cfg = tiny_config(tiny_model_dir, train_steps=6)
    a = train_sft(cfg, train, tmp_path / "a")
    b = train_sft(cfg, train, tmp_path / "b")
    wa = load_file(a.adapter_dir / "adapter_model.safetensors")
    wb = load_file(b.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_data_never_starts_training(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input_text": "hi", "output_text": "there"}) + "\n{not json\n")
    with pytest.raises(DatasetValidationError) as err:
        train_sft(tiny_config(tiny_model_dir), bad, tmp_path / "run")
    assert "bad.jsonl:2" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_config_reports_every_problem_at_once():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        SFTConfig(adapter_size=3, batch_size=0, learning_rate_multiplier=-1)
    assert {e["loc"][0] for e in err.value.errors()} == {
        "adapter_size",
        "batch_size",
        "learning_rate_multiplier",
    }
    with pytest.raises(ValidationError, match="epochs or train_steps"):
        SFTConfig(epochs=1, train_steps=5)

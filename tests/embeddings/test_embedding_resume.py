"""The embedding recipe on a tiny encoder: the bundle's exact files, and a run stopped at a
checkpoint and resumed ends with the same adapter and losses as an uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tunelab.configs.embedding import EmbeddingConfig
from tunelab.embeddings.data import load_embedding_data
from tunelab.embeddings.model import load_encoder
from tunelab.recipes.embedding import train_embedding
from tunelab.training.run import TrainingInterrupted


def test_bundle_files_and_resume_matches_uninterrupted(tmp_path, tiny_encoder_dir, small_data):
    data = load_embedding_data(**small_data)
    config = EmbeddingConfig(
        base_model=str(tiny_encoder_dir),
        train_steps=6,
        batch_size=4,
        checkpoint_every_steps=2,
        learning_rate_multiplier=5,
        output_dimensionality=16,
    )
    straight = train_embedding(config, data, tmp_path / "a")
    assert sorted(p.name for p in straight.adapter_dir.iterdir()) == [
        "README.md",  # PEFT's model card
        "adapter_config.json",
        "adapter_model.safetensors",
        "data_stats.json",
        "embedding_config.json",
        "loss_curve.png",
        "manifest.json",
        "metrics.jsonl",
        "tokenizer.json",
        "tokenizer_config.json",
        "tuning_config.json",
    ]
    manifest = json.loads((straight.adapter_dir / "manifest.json").read_text())
    assert manifest["kind"] == "embedding_adapter" and manifest["steps"] == 6

    calls = 0

    def stop_at_step_3() -> bool:
        nonlocal calls
        calls += 1
        return calls == 4

    with pytest.raises(TrainingInterrupted):
        train_embedding(config, data, tmp_path / "b", should_stop=stop_at_step_3)
    resumed = train_embedding(config, data, tmp_path / "b")
    assert resumed.resumed_from_step == 3 and resumed.steps == 6

    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)

    def losses(run):
        rows = (run.adapter_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["train_loss"] for r in rows]

    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)

    encoder = load_encoder(straight.adapter_dir)
    vectors = encoder.encode(["PQS access", "Pelican access"])
    assert vectors.shape == (2, 16)
    assert torch.linalg.norm(vectors, dim=1) == pytest.approx(torch.ones(2), abs=1e-5)

"""Embedding tuning on 2 processes: in-batch negatives span the global batch (each rank's
embeddings gathered with their gradient), so the adapter equals the one process trains, also
when a batch is smaller than the world (9 pairs in batches of 4: the last batch has 1)."""

import torch
from safetensors.torch import load_file

from tunelab.configs.embedding import EmbeddingConfig
from tunelab.embeddings.data import load_embedding_data
from tunelab.recipes.embedding import train_embedding
from tunelab.training.launch import run_recipe


def test_two_processes_train_the_adapter_one_process_trains(
    tmp_path, tiny_encoder_dir, small_data, monkeypatch
):
    monkeypatch.setenv("TUNELAB_COLLECTIVE_TIMEOUT", "60")
    data = load_embedding_data(**small_data)
    values = dict(
        base_model=str(tiny_encoder_dir),
        train_steps=3,  # batches of 4, 4 and 1 pairs
        batch_size=4,
        learning_rate_multiplier=5,
        output_dimensionality=16,
    )
    one = train_embedding(EmbeddingConfig(**values), data, tmp_path / "one")
    two = run_recipe(
        train_embedding,
        EmbeddingConfig(**values, processes=2),
        data,  # the other rank loads the same files itself
        tmp_path / "two",
        processes=2,
    )
    a = load_file(one.adapter_dir / "adapter_model.safetensors")
    b = load_file(two.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(a[k].abs().max() for k in a if "lora_B" in k) > 1e-4  # it trained
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)

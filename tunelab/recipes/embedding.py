"""Embedding tuning with a LoRA adapter: setup -> train -> save, readable top to bottom.

    tunelab tune embedding --corpus examples/embedding/corpus.jsonl \
        --queries examples/embedding/queries.jsonl --train-labels examples/embedding/train.tsv \
        --test-labels examples/embedding/test.tsv --name acme-search

What is trained: a LoRA adapter (rank ``adapter_size``, default 8, alpha = 2 x rank) on the
``query``, ``key``, ``value`` and every ``dense`` layer of each encoder block; the embeddings,
layer norms and the base weights stay frozen. On all-MiniLM-L6-v2 that is 0.33M trainable
parameters of 22.7M (1.5%). Rank 8 on all linear layers, rather than q/v only, follows QLoRA's
finding that covering every linear layer matters more than the rank; a 384-wide encoder has
little to gain above rank 8, and the adapter stays ~1.3 MB.

The loss is InfoNCE with in-batch negatives (tunelab.embeddings.loss) on (query, relevant
passage) pairs, the labels with a score above 0. Pairs are visited in a seeded shuffle, epoch
after epoch, so the batch at any step is a pure function of (seed, step); together with the
learning rate (a function of the step) and the checkpointed optimizer and RNG state, a resumed
run ends with the same adapter as an uninterrupted one (tunelab.training.run).

Dropout is switched off during training (the model is kept in eval mode): with a frozen base and
a low-rank update there is little to regularise, and it keeps the run a function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Unpack

import torch

from tunelab.configs.embedding import EmbeddingConfig
from tunelab.embeddings.data import EmbeddingData
from tunelab.embeddings.loss import in_batch_contrastive_loss
from tunelab.embeddings.model import (
    BUNDLE_KIND,
    EMBEDDING_CONFIG,
    load_encoder,
    resolve_embedding_model,
)
from tunelab.training.atomic import write_json
from tunelab.training.lora import ENCODER_LORA_TARGETS, with_lora
from tunelab.training.metrics import plot_loss_curve
from tunelab.training.run import BatchOrder, RunHooks, RunResult, TrainingRun


@dataclass(kw_only=True)
class EmbeddingResult(RunResult):
    trainable_parameters: int


def train_embedding(
    config: EmbeddingConfig,
    data: EmbeddingData,
    run_dir: Path,
    **hooks: Unpack[RunHooks],
) -> EmbeddingResult:
    """Tune an encoder's LoRA adapter on ``data``'s training labels into ``run_dir/adapter``."""
    # ---------------------------------------------------------------- data
    run = TrainingRun(run_dir, config, **hooks)
    pairs = data.train_pairs()  # (query id, corpus id), positives only
    if len(pairs) < 2:
        raise ValueError("embedding tuning needs at least 2 positive training labels")
    batch_size = min(config.batch_size, len(pairs))

    # ---------------------------------------------------------------- model
    run.report("loading", f"loading embedding model {config.base_model}")
    base_ref, base_path = run.base_ref, run.base_path = resolve_embedding_model(config.base_model)
    encoder = load_encoder(base_path, config.output_dimensionality)
    encoder.model = model = with_lora(
        encoder.model, config.adapter_size, config.lora_alpha, ENCODER_LORA_TARGETS
    )
    run.place(model)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    order = BatchOrder([1] * len(pairs), batch_size, config.seed)  # a seeded shuffle per epoch
    run.start(
        model,
        learning_rate=config.learning_rate,
        total_steps=config.train_steps,
        order=order,
    )

    # ---------------------------------------------------------------- train
    model.eval()  # no dropout (see the module docstring); gradients still flow
    for step in run.steps():
        local = [pairs[i] for i in run.local_batch(step)]  # this rank's share
        q = encoder.forward([data.queries[qid] for qid, _ in local], config.max_seq_length)
        tokens = encoder.last_token_count
        p = encoder.forward([data.passage(cid) for _, cid in local], config.max_seq_length)
        tokens += encoder.last_token_count
        # In-batch negatives span the global batch: every rank gathers all ranks' embeddings
        # (B, D) and computes the same loss on them (one process: the local batch is all).
        sizes = run.batch_sizes(step)
        q, p = run.gather_rows(q, sizes), run.gather_rows(p, sizes)
        batch = [pairs[i] for i in order.at(step)]
        # (B, B): passage j is also relevant to query i (same query twice, or a shared passage)
        also_relevant = torch.tensor(
            [[data.train[qi].get(cj, 0) > 0 for _, cj in batch] for qi, _ in batch],
            device=run.device,
        )
        loss = in_batch_contrastive_loss(q, p, config.temperature, also_relevant)
        # in-batch accuracy: how often the query's own passage scored highest in the batch
        own = torch.arange(len(batch), device=run.device)
        accuracy = (q.detach() @ p.detach().T).argmax(dim=1).eq(own)
        run.backward_and_step(
            loss,
            tokens=tokens,
            in_batch_accuracy=accuracy.float().mean().item(),
            pairs_per_second=len(batch) / run.step_seconds(),
        )

    # ---------------------------------------------------------------- save
    def save_pooling(folder: Path) -> None:
        write_json(
            folder / EMBEDDING_CONFIG,
            {
                "base_model": base_ref,
                "base_model_path": str(base_path),
                "pooling": encoder.spec.to_dict(),
                "output_dimensionality": config.output_dimensionality,
                "dimensions": encoder.output_dimensions,
            },
        )

    run.usage(trained_pairs=run.step * batch_size)
    adapter_dir = run.write_bundle(
        model,
        encoder.tokenizer,
        kind=BUNDLE_KIND,
        save_more=save_pooling,
        datasets=data.sha256,
        data_stats=data.stats(),
        title=f"Embedding tuning of {base_ref}",
        plot=partial(plot_loss_curve, loss_label="in-batch contrastive loss"),
    )
    return EmbeddingResult(trainable_parameters=n_trainable, **run.result(adapter_dir))


def evaluate_base_and_tuned(
    config: EmbeddingConfig, data: EmbeddingData, adapter_dir: Path
) -> dict[str, Any]:
    """Retrieval metrics on the test labels (and validation labels, if any) for the base model
    and the tuned one, at the same output dimensionality, side by side."""
    from tunelab.embeddings.metrics import compare, evaluate_encoder
    from tunelab.models.device import resolve_placement

    device = resolve_placement(config.accelerator, config.devices).device
    sets = {"test": data.test, **({"validation": data.validation} if data.validation else {})}
    results: dict[str, Any] = {}
    for label, encoder in (
        ("base", load_encoder(config.base_model, config.output_dimensionality)),
        ("tuned", load_encoder(adapter_dir)),
    ):
        encoder.model.to(device)
        results[label] = {
            name: evaluate_encoder(encoder, data, labels) for name, labels in sets.items()
        }
        del encoder
    return {
        "metrics": {name: compare(results["base"][name], results["tuned"][name]) for name in sets},
        "queries": {name: results["base"][name]["queries"] for name in sets},
        "test_from_split": data.test_from_split,
        "output_dimensionality": config.output_dimensionality,
    }

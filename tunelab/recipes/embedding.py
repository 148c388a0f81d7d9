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
run ends with the same adapter as an uninterrupted one.

Dropout is switched off during training (the model is kept in eval mode): with a frozen base and
a low-rank update there is little to regularise, and it keeps the run a function of its seed.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab import __version__
from tunelab.bundle import MANIFEST, file_hashes
from tunelab.configs.embedding import EmbeddingConfig
from tunelab.embeddings.data import EmbeddingData
from tunelab.embeddings.loss import in_batch_contrastive_loss
from tunelab.embeddings.model import (
    BUNDLE_KIND,
    EMBEDDING_CONFIG,
    Encoder,
    load_encoder,
    resolve_embedding_model,
)
from tunelab.training.atomic import atomic_dir, write_json
from tunelab.training.checkpoint import LoopState, load_latest, save_checkpoint
from tunelab.training.metrics import MetricsLog, plot_loss_curve
from tunelab.training.progress import Progress, ProgressCallback, no_progress

logger = logging.getLogger(__name__)

LORA_TARGETS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"
"""Every linear layer of each BERT-style encoder block (attention q/k/v/output, both MLP
layers); the pooler, unused by mean pooling, is left out."""


class TrainingInterrupted(RuntimeError):
    """The run was asked to stop; a checkpoint was written and the same command resumes it."""


@dataclass
class EmbeddingResult:
    adapter_dir: Path
    steps: int
    final_train_loss: float | None
    resumed_from_step: int
    trainable_parameters: int
    usage: dict[str, Any] = field(default_factory=dict)


def train_embedding(
    config: EmbeddingConfig,
    data: EmbeddingData,
    run_dir: Path,
    *,
    on_progress: ProgressCallback = no_progress,
    should_stop: Callable[[], bool] = lambda: False,
) -> EmbeddingResult:
    # ---------------------------------------------------------------- setup
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)
    on_progress(Progress("loading", message=f"loading embedding model {config.base_model}"))
    base_ref, base_path = resolve_embedding_model(config.base_model)
    encoder = load_encoder(base_path, config.output_dimensionality)
    encoder.model = _with_lora(encoder.model, config)
    model = encoder.model
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)

    pairs = data.train_pairs()  # (query id, corpus id), positives only
    if len(pairs) < 2:
        raise ValueError("embedding tuning needs at least 2 positive training labels")
    batch_size = min(config.batch_size, len(pairs))
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    total_steps = config.train_steps
    warmup = int(config.warmup_ratio * total_steps)

    ckpt_dir, metrics = run_dir / "checkpoints", MetricsLog(run_dir / "metrics.jsonl")
    state = load_latest(ckpt_dir, model, optimizer) or LoopState()
    resumed_from = state.step
    metrics.truncate_after(state.step)

    def learning_rate(step: int) -> float:
        """Linear warm-up, then linear decay to zero: a pure function of the step."""
        if step < warmup:
            return config.learning_rate * (step + 1) / warmup
        return config.learning_rate * max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    def batch_at(step: int) -> list[tuple[str, str]]:
        epoch, index = divmod(step, steps_per_epoch)
        order = list(range(len(pairs)))
        random.Random(f"{config.seed}-{epoch}").shuffle(order)
        return [pairs[i] for i in order[index * batch_size : (index + 1) * batch_size]]

    # ---------------------------------------------------------------- train
    model.eval()  # no dropout (see the module docstring); gradients still flow
    last_loss: float | None = None
    timer_start, timer_step = time.perf_counter(), state.step
    while state.step < total_steps:
        if should_stop():
            save_checkpoint(ckpt_dir, model, optimizer, state)
            raise TrainingInterrupted(f"stopped at step {state.step}; the same command resumes it")
        step_start = time.perf_counter()
        batch = batch_at(state.step)
        lr = learning_rate(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr

        q = encoder.forward([data.queries[qid] for qid, _ in batch], config.max_seq_length)
        tokens = encoder.last_token_count
        p = encoder.forward([data.passage(cid) for _, cid in batch], config.max_seq_length)
        tokens += encoder.last_token_count
        # (B, B): passage j is also relevant to query i (same query twice, or a shared passage)
        also_relevant = torch.tensor(
            [[data.train[qi].get(cj, 0) > 0 for _, cj in batch] for qi, _ in batch]
        )
        loss = in_batch_contrastive_loss(q, p, config.temperature, also_relevant)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - step_start
        state.step += 1
        state.tokens_seen += tokens
        state.train_seconds += elapsed
        last_loss = loss.item()
        # in-batch accuracy: how often the query's own passage scored highest in the batch
        accuracy = (q.detach() @ p.detach().T).argmax(dim=1).eq(torch.arange(len(batch)))
        metrics.append(
            {
                "step": state.step,
                "epoch": state.step / steps_per_epoch,
                "train_loss": last_loss,
                "in_batch_accuracy": accuracy.float().mean().item(),
                "learning_rate": lr,
                "grad_norm": float(grad_norm),
                "pairs_per_second": len(batch) / elapsed,
            }
        )
        if state.step % config.checkpoint_every_steps == 0 and state.step < total_steps:
            save_checkpoint(ckpt_dir, model, optimizer, state)
        rate = (time.perf_counter() - timer_start) / max(1, state.step - timer_step)
        on_progress(
            Progress(
                "training",
                state.step,
                total_steps,
                train_loss=last_loss,
                eta_seconds=rate * (total_steps - state.step),
            )
        )

    # ---------------------------------------------------------------- save
    on_progress(Progress("saving", state.step, total_steps, message="writing the adapter bundle"))
    usage = {
        "trained_pairs": state.step * batch_size,
        "trained_tokens": state.tokens_seen,
        "train_seconds": round(state.train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
        "cpu_seconds": round(time.process_time() - cpu_start, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    adapter_dir = run_dir / "adapter"
    _write_bundle(adapter_dir, encoder, config, base_ref, base_path, data, metrics, state, usage)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    on_progress(Progress("done", state.step, total_steps, train_loss=last_loss))
    return EmbeddingResult(
        adapter_dir=adapter_dir,
        steps=state.step,
        final_train_loss=last_loss,
        resumed_from_step=resumed_from,
        trainable_parameters=n_trainable,
        usage=usage,
    )


def evaluate_base_and_tuned(
    config: EmbeddingConfig, data: EmbeddingData, adapter_dir: Path
) -> dict[str, Any]:
    """Retrieval metrics on the test labels (and validation labels, if any) for the base model
    and the tuned one, at the same output dimensionality, side by side."""
    from tunelab.embeddings.metrics import compare, evaluate_encoder

    sets = {"test": data.test, **({"validation": data.validation} if data.validation else {})}
    results: dict[str, Any] = {}
    for label, encoder in (
        ("base", load_encoder(config.base_model, config.output_dimensionality)),
        ("tuned", load_encoder(adapter_dir)),
    ):
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


def _with_lora(model, config: EmbeddingConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.adapter_size,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
    )
    return get_peft_model(model, lora)


def _write_bundle(
    adapter_dir: Path,
    encoder: Encoder,
    config: EmbeddingConfig,
    base_ref: str,
    base_path: Path,
    data: EmbeddingData,
    metrics: MetricsLog,
    state: LoopState,
    usage: dict[str, Any],
) -> None:
    with atomic_dir(adapter_dir) as tmp:
        encoder.model.save_pretrained(tmp, safe_serialization=True)
        encoder.tokenizer.save_pretrained(tmp)
        write_json(
            tmp / EMBEDDING_CONFIG,
            {
                "base_model": base_ref,
                "base_model_path": str(base_path),
                "pooling": encoder.spec.to_dict(),
                "output_dimensionality": config.output_dimensionality,
                "dimensions": encoder.output_dimensions,
            },
        )
        write_json(
            tmp / "tuning_config.json", {**config.model_dump(), "base_model_path": str(base_path)}
        )
        write_json(tmp / "data_stats.json", data.stats())
        shutil.copyfile(metrics.path, tmp / "metrics.jsonl")
        plot_loss_curve(
            metrics.rows(), tmp / "loss_curve.png", title=f"Embedding tuning of {base_ref}"
        )
        write_json(
            tmp / MANIFEST,
            {
                "kind": BUNDLE_KIND,
                "method": config.method,
                "base_model": base_ref,
                "tunelab_version": __version__,
                "datasets_sha256": data.sha256,
                "steps": state.step,
                "usage": usage,
                "files": file_hashes(tmp),
            },
        )

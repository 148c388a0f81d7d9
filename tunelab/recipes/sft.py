"""Supervised tuning of a LoRA adapter: setup -> train -> save, readable top to bottom.

    tunelab tune sft --train examples/ticket-routing/train.jsonl \
        --validation examples/ticket-routing/validation.jsonl --name ticket-router

Why a loop of our own rather than ``transformers.Trainer``/TRL's ``SFTTrainer``: on a CPU the
training step is all that matters, and three things the generic trainers do by default waste
most of it (bench/bench_sft.py measures the difference):
- padding: batches are grouped by length (tunelab.data.batching), and right padding under a
  causal mask needs no attention mask at all;
- the output head: logits are computed only at positions whose next token is a model-turn
  target (tunelab.losses.lm), not over a 49k vocabulary at every prompt position;
- recomputation: no activation checkpointing; a small model's activations fit in memory.
A fourth waste is particular to tuning data: every example repeats the same instructions, and
the prompt prefix a batch shares is computed once (tunelab.training.prefix_sharing).
On Llama-style models the LoRA layers also train through a fused forward and hand-written
backward (tunelab.training.fused_lora): the same parameters and maths as PEFT's, in fewer and
larger matmuls with no full-size elementwise passes for the LoRA terms.

A run lives in one folder (``run_dir``) named by a system-made id; killing it at any moment and
running the same command again resumes from the last checkpoint and ends with the same adapter
as an uninterrupted run (the batch order, the learning-rate schedule and the optimizer state are
all functions of the step, restored from the checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

from tunelab.configs.sft import SFTConfig
from tunelab.data.batching import collate
from tunelab.data.template import Encoded
from tunelab.data.validation import ValidationReport, load_supervised
from tunelab.losses.lm import completion_loss
from tunelab.training.eval_loss import evaluate
from tunelab.training.init_adapter import init_adapter_from
from tunelab.training.lora import lora_model
from tunelab.training.run import BatchOrder, RunHooks, RunResult, TrainingRun


@dataclass(kw_only=True)
class SFTResult(RunResult):
    best_step: int | None
    best_eval_loss: float | None
    stopped_early: bool


def train_sft(
    config: SFTConfig,
    train_file: Path,
    run_dir: Path,
    validation_file: Path | None = None,
    init_adapter_dir: Path | None = None,
    **hooks: Unpack[RunHooks],
) -> SFTResult:
    """Tune a LoRA adapter on the examples of ``train_file`` (the best one on
    ``validation_file``'s loss, when given) into ``run_dir/adapter``."""
    # ---------------------------------------------------------------- data
    run = TrainingRun(run_dir, config, **hooks)
    base, tokenizer = run.load_base_model()
    run.report("validating", f"reading {train_file}")
    train, train_report = load_supervised(
        train_file, tokenizer, max_seq_length=config.max_seq_length
    )
    val: list[Encoded] = []
    val_report: ValidationReport | None = None
    if validation_file is not None:
        val, val_report = load_supervised(
            validation_file, tokenizer, max_seq_length=config.max_seq_length
        )
    pad_id = tokenizer.pad_token_id

    # ---------------------------------------------------------------- model
    model = run.place(lora_model(base.path, config.adapter_size, config.lora_alpha))
    if init_adapter_dir is not None:  # continued tuning: step 0 is the parent adapter
        init_adapter_from(model, init_adapter_dir)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    order = BatchOrder([len(e.input_ids) for e in train], config.batch_size, config.seed)
    fast = run.start_lora(
        model,
        tokenizer,
        total_steps=config.total_steps(len(train)),
        order=order,
        validating=bool(val),
    )  # the last keep_checkpoints checkpoints and the best are kept as models

    # ---------------------------------------------------------------- train
    model.train()
    for step in run.steps():
        batch = run.batch(
            collate([train[i] for i in run.local_batch(step)], pad_id)
        )  # this rank's share
        hidden, p = fast.hidden(batch.input_ids, batch.loss_mask)  # p: shared prefix, computed once
        loss, correct, n_targets = completion_loss(
            hidden, head, batch.input_ids[:, p:], batch.loss_mask[:, p:]
        )
        run.backward_and_step(
            loss,
            tokens=batch.tokens,
            weight=n_targets,  # loss is the mean over them: ranks average by it
            train_accuracy=correct.item() / max(1, n_targets),
        )
        if run.evaluation_due():
            result = run.evaluate(
                lambda: evaluate(model, decoder, head, val, config.batch_size, pad_id)
            )
            run.track_best(result["eval_loss"], config.early_stopping_patience)

    # ---------------------------------------------------------------- save
    run.restore_best()  # the bundle holds the adapter of the best evaluation
    run.usage(billable_tokens=run.billable_tokens(train_report.total_tokens))

    state = run.state
    best = dict(
        best_step=state.best_step,
        best_eval_loss=state.best_eval_loss,
        stopped_early=state.stopped_early,
    )
    datasets = {"train": train_report, "validation": val_report}
    adapter_dir = run.write_bundle(
        model, tokenizer, datasets=datasets, title=f"SFT on {base.ref}", **best
    )
    return SFTResult(**best, **run.result(adapter_dir))

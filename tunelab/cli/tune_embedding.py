"""``tunelab tune embedding``: tune a text-embedding model on a corpus, queries and relevance
labels, as a job run in this process (the same command resumes it), then show retrieval metrics
of the base and the tuned model side by side."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import typer

from tunelab.cli.tune import app, config_errors, console, fail, run_in_process
from tunelab.configs.embedding import DEFAULT_EMBEDDING_MODEL


@app.command("embedding")
def embedding(
    corpus: Path = typer.Option(
        ..., "--corpus", exists=True, dir_okay=False, help="Corpus JSONL (_id, title, text)."
    ),
    queries: Path = typer.Option(
        ..., "--queries", exists=True, dir_okay=False, help="Queries JSONL (_id, text)."
    ),
    train_labels: Path = typer.Option(
        ...,
        "--train-labels",
        exists=True,
        dir_okay=False,
        help="TSV with header query-id, corpus-id, score.",
    ),
    name: str = typer.Option(
        ..., "--name", help="Name of the tuned model: 1-128 letters, digits, -_. (no / or @)."
    ),
    test_labels: Path | None = typer.Option(
        None,
        "--test-labels",
        exists=True,
        dir_okay=False,
        help="Test labels TSV (default: 20% of the training queries, held out).",
    ),
    validation_labels: Path | None = typer.Option(
        None, "--validation-labels", exists=True, dir_okay=False, help="Validation labels TSV."
    ),
    base: str = typer.Option(
        DEFAULT_EMBEDDING_MODEL, "--base", help="Base embedding model: catalog name or folder."
    ),
    train_steps: int = typer.Option(60, "--train-steps"),
    batch_size: int = typer.Option(32, "--batch-size"),
    learning_rate_multiplier: float = typer.Option(1.0, "--learning-rate-multiplier"),
    output_dimensionality: int | None = typer.Option(None, "--output-dimensionality"),
    adapter_size: int = typer.Option(8, "--adapter-size", help="LoRA rank."),
    max_seq_length: int = typer.Option(256, "--max-seq-length"),
    seed: int = typer.Option(42, "--seed"),
    processes: int = typer.Option(
        1, "--processes", "--workers", help="Training processes (data parallel); same result."
    ),
    detach: bool = typer.Option(False, "--detach", help="Only submit the job."),
    restart: bool = typer.Option(False, "--restart", help="Tune again even if already done."),
) -> None:
    """Parameter-efficient (LoRA) contrastive tuning of an embedding model, as a job."""
    from pydantic import ValidationError

    from tunelab.bundle import sha256_file
    from tunelab.configs.embedding import EmbeddingConfig
    from tunelab.jobs.submit import submit_job
    from tunelab.services import open_services

    try:
        config = EmbeddingConfig(
            base_model=base,
            train_steps=train_steps,
            batch_size=batch_size,
            learning_rate_multiplier=learning_rate_multiplier,
            output_dimensionality=output_dimensionality,
            adapter_size=adapter_size,
            max_seq_length=max_seq_length,
            seed=seed,
            processes=processes,
        )
    except ValidationError as exc:
        fail(config_errors(exc))
    from tunelab.registry.names import InvalidModelName, check_tuned_model_name

    try:
        check_tuned_model_name(name)
    except InvalidModelName as exc:
        fail(f"--name: {exc}")
    files = {
        "corpus": corpus,
        "queries": queries,
        "train_labels": train_labels,
        "test_labels": test_labels,
        "validation_labels": validation_labels,
    }
    key_src = json.dumps(
        {
            "name": name,
            "config": config.model_dump(mode="json"),
            "data": {role: sha256_file(p) if p else None for role, p in files.items()},
        },
        sort_keys=True,
    )
    key = "cli-emb-" + hashlib.sha256(key_src.encode()).hexdigest()[:32]
    if restart:
        key += "-" + uuid.uuid4().hex[:8]
    services = open_services()
    job, created = submit_job(
        services.db,
        services.artifacts,
        config=config,
        name=name,
        datasets=files,
        idempotency_key=key,
    )
    console.print(f"{'submitted' if created else 'found'} tuning job {job.id} ({job.state})")
    if detach:
        print(job.id)
        return
    run_in_process(services, job.id)
    show_evaluation(services, name)


def show_evaluation(services, name: str) -> None:
    from rich.table import Table

    from tunelab.registry.models import get_version

    evaluation = get_version(services.db, name).evaluation or {}
    for split, metrics in (evaluation.get("metrics") or {}).items():
        queries = (evaluation.get("queries") or {}).get(split)
        table = Table(title=f"retrieval on the {split} labels ({queries} queries)")
        for column in ("metric", "base", "tuned", "change"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for metric, v in metrics.items():
            table.add_row(metric, f"{v['base']:.3f}", f"{v['tuned']:.3f}", f"{v['delta']:+.3f}")
        console.print(table)
    console.print(
        f'embed with it: POST /v1/embeddings {{"model": "{name}", "input": [...]}} '
        "or the SDK's TextEmbeddingModel.from_pretrained(name).get_embeddings([...])"
    )

"""The embedding-tuning pipeline: validate -> prepare -> train -> evaluate -> register -> deploy.

Dataset roles: ``corpus``, ``queries``, ``train_labels`` (required), ``test_labels`` and
``validation_labels`` (optional; without test labels, 20% of the training queries are held out
with the config's seed). The evaluate step reports recall@1/5/10, NDCG@10 and MRR@10 of the base
and the tuned model side by side; it is stored on the model version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.configs.embedding import EmbeddingConfig
from tunelab.jobs.errors import PermanentError
from tunelab.jobs.pipeline import StepContext, StopRequested, register_pipeline
from tunelab.jobs.progress import training_reporter
from tunelab.registry.datasets import get_dataset

ROLES = ("corpus", "queries", "train_labels", "test_labels", "validation_labels")


def _paths(ctx: StepContext) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    for role in ROLES:
        dataset_id = ctx.job.datasets.get(role)
        out[role] = (
            None
            if dataset_id is None
            else ctx.store.local_path(get_dataset(ctx.db, dataset_id).uri)
        )
    return out


def _load(ctx: StepContext):
    from tunelab.embeddings.data import EmbeddingDataError, load_embedding_data

    config = EmbeddingConfig(**ctx.job.config)
    paths = _paths(ctx)
    for role in ("corpus", "queries", "train_labels"):
        if paths[role] is None:
            raise PermanentError("invalid_dataset", f"the job has no {role} dataset")
    try:
        return load_embedding_data(
            paths["corpus"],
            paths["queries"],
            paths["train_labels"],
            paths["test_labels"],
            paths["validation_labels"],
            seed=config.seed,
        )
    except EmbeddingDataError as exc:
        # Name the files by role and dataset id, not by their (hashed) place in the store.
        names = {str(p): f"{r} dataset ({ctx.job.datasets[r]})" for r, p in paths.items() if p}
        errors = []
        for e in exc.errors:
            e.file = names.get(e.file, e.file)
            errors.append({**e.to_dict(), "file": e.file})
        raise PermanentError(
            "invalid_dataset", str(exc).splitlines()[0], {"errors": errors}
        ) from None


def validate(ctx: StepContext) -> dict[str, Any]:
    """Every file is read whole; any bad line fails the job with its file and line number."""
    return {"reports": _load(ctx).stats()}


def prepare(ctx: StepContext) -> dict[str, Any]:
    from tunelab.embeddings.model import resolve_embedding_model

    ref, path = resolve_embedding_model(EmbeddingConfig(**ctx.job.config).base_model)
    return {"base_model": ref, "base_model_path": str(path)}


def train(ctx: StepContext) -> dict[str, Any]:
    from tunelab.recipes.embedding import TrainingInterrupted, train_embedding

    config = EmbeddingConfig(**ctx.job.config)
    data = _load(ctx)
    metrics_path = ctx.workdir / "metrics.jsonl"

    on_progress = training_reporter(
        ctx.report,
        start=0.05,
        share=0.8,
        eval_every=None,
        on_sync=lambda: ctx.on_metrics(metrics_path),
    )

    try:
        result = train_embedding(
            config, data, ctx.workdir, on_progress=on_progress, should_stop=ctx.should_stop
        )
    except TrainingInterrupted as exc:
        raise StopRequested from exc
    ctx.on_metrics(metrics_path)
    stored = ctx.store.put_dir(result.adapter_dir, f"jobs/{ctx.job.id}/adapter")
    return {
        "adapter": {"uri": stored.uri, "sha256": stored.sha256, "size_bytes": stored.size_bytes},
        "usage": result.usage,
        "final_train_loss": result.final_train_loss,
        "steps": result.steps,
        "trainable_parameters": result.trainable_parameters,
    }


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """Base and tuned model on the test labels (and validation labels), side by side."""
    from tunelab.recipes.embedding import evaluate_base_and_tuned

    ctx.report("evaluating base and tuned model", 0.87, None)
    config = EmbeddingConfig(**ctx.job.config)
    adapter_dir = ctx.store.local_path(ctx.outputs["train"]["adapter"]["uri"])
    return {"evaluation": evaluate_base_and_tuned(config, _load(ctx), adapter_dir)}


def register(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.models import register_version, set_evaluation

    trained = ctx.outputs["train"]
    adapter = trained["adapter"]
    inputs = [("dataset", ctx.job.datasets[r], r) for r in ROLES if ctx.job.datasets.get(r)]
    version = register_version(
        ctx.db,
        name=ctx.job.tuned_model_name,
        method=ctx.job.method,
        base_model=ctx.job.base_model,
        adapter_uri=adapter["uri"],
        adapter_sha256=adapter["sha256"],
        adapter_size=adapter["size_bytes"],
        config=ctx.job.config,
        data_stats=ctx.outputs["validate"]["reports"],
        metrics={k: trained.get(k) for k in ("final_train_loss", "steps", "trainable_parameters")},
        source_job_id=ctx.job.id,
        inputs=inputs,
    )
    evaluation = ctx.outputs.get("evaluate", {}).get("evaluation")
    if evaluation:
        set_evaluation(ctx.db, version.id, evaluation)
    return {"model_version_id": version.id, "name": version.model_name, "version": version.version}


def deploy(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.endpoints import deploy_version

    endpoint = deploy_version(ctx.db, ctx.outputs["register"]["model_version_id"])
    return {"endpoint": endpoint.id}


register_pipeline(
    "embedding",
    [
        ("validate", validate),
        ("prepare", prepare),
        ("train", train),
        ("evaluate", evaluate),
        ("register", register),
        ("deploy", deploy),
    ],
    weights={
        "validate": 0.02,
        "prepare": 0.03,
        "train": 0.8,
        "evaluate": 0.11,
        "register": 0.02,
        "deploy": 0.02,
    },
)

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
from tunelab.jobs import steps
from tunelab.jobs.errors import PermanentError
from tunelab.jobs.pipeline import StepContext

ROLES = ("corpus", "queries", "train_labels", "test_labels", "validation_labels")


def _paths(ctx: StepContext) -> dict[str, Path | None]:
    return {role: steps.dataset_path(ctx, role) for role in ROLES}


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
    from tunelab.recipes.embedding import train_embedding

    config = EmbeddingConfig(**ctx.job.config)
    result = steps.train_in_job(ctx, train_embedding, config, _load(ctx), ctx.workdir, share=0.8)
    return {
        "adapter": steps.store_dir(ctx, result.adapter_dir, "adapter"),
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
    from tunelab.registry.models import set_evaluation

    trained = ctx.outputs["train"]
    inputs = [("dataset", ctx.job.datasets[r], r) for r in ROLES if ctx.job.datasets.get(r)]
    metrics = {k: trained.get(k) for k in ("final_train_loss", "steps", "trainable_parameters")}
    version = steps.register_adapter(ctx, trained["adapter"], metrics, inputs)
    evaluation = ctx.outputs.get("evaluate", {}).get("evaluation")
    if evaluation:
        set_evaluation(ctx.db, version.id, evaluation)
    return steps.registered(version)


def summary(outputs: dict[str, dict[str, Any]]) -> list[str]:
    """Retrieval metrics of base and tuned model per labelled split, as small tables."""
    evaluation = outputs.get("evaluate", {}).get("evaluation") or {}
    lines = []
    for split, metrics in (evaluation.get("metrics") or {}).items():
        queries = (evaluation.get("queries") or {}).get(split)
        lines.append(f"retrieval on the {split} labels ({queries} queries):")
        lines.append(f"  {'metric':<10} {'base':>7} {'tuned':>7} {'change':>7}")
        for metric, v in metrics.items():
            lines.append(f"  {metric:<10} {v['base']:>7.3f} {v['tuned']:>7.3f} {v['delta']:>+7.3f}")
    name = outputs.get("register", {}).get("name")
    if name:
        lines.append(
            f'embed with it: POST /v1/embeddings {{"model": "{name}", "input": [...]}} '
            "or the SDK's TextEmbeddingModel.from_pretrained(name).get_embeddings([...])"
        )
    return lines


# Evaluation embeds the corpus twice (base and tuned): a larger share than the others'.
PIPELINE = steps.standard_pipeline(
    "embedding",
    validate,
    prepare,
    train,
    evaluate,
    register,
    {"train": 0.8, "evaluate": 0.11},
    summary,
)

"""The DPO pipeline: validate -> prepare -> train -> evaluate -> register -> deploy.

Datasets by role: ``preference`` (pairs; ``train`` is accepted too, so ``tunelab jobs submit
--method dpo --train pairs.jsonl`` and the REST API's ``train_dataset`` work) and optionally
``validation`` (held-out pairs). With ``init_adapter`` the run starts from that tuned model (a
registered name or name@version, or a bundle folder), which is also its reference, and the new
version's lineage records it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tunelab.config import get_settings
from tunelab.configs.dpo import DPOConfig
from tunelab.data.validation import DatasetValidationError
from tunelab.jobs.errors import PermanentError
from tunelab.jobs.pipeline import StepContext, StopRequested, register_pipeline
from tunelab.registry.datasets import get_dataset

logger = logging.getLogger(__name__)


def _role(ctx: StepContext, role: str) -> str | None:
    """The job's dataset role for ``role``; the preference pairs may also come as ``train``."""
    if role == "preference" and "preference" not in ctx.job.datasets:
        role = "train"
    return role if role in ctx.job.datasets else None


def _dataset_path(ctx: StepContext, role: str) -> Path | None:
    name = _role(ctx, role)
    if name is None:
        return None
    return ctx.store.local_path(get_dataset(ctx.db, ctx.job.datasets[name]).uri)


def validate(ctx: StepContext) -> dict[str, Any]:
    """Every dataset is read whole; any bad line fails the job with its line numbers."""
    from tunelab.data.preference import validate_preference_file
    from tunelab.models import load_tokenizer, resolve_model

    config = DPOConfig(**ctx.job.config)
    if _role(ctx, "preference") is None:
        raise PermanentError("missing_dataset", "a DPO job needs a 'preference' dataset")
    tokenizer = load_tokenizer(resolve_model(config.base_model).path)
    reports = {}
    for role in ("preference", "validation"):
        path = _dataset_path(ctx, role)
        if path is None:
            continue
        report = validate_preference_file(
            path,
            tokenizer,
            prompt_sequence_length=config.prompt_sequence_length,
            target_sequence_length=config.target_sequence_length,
        )
        report.path = f"{role} dataset ({ctx.job.datasets[_role(ctx, role)]})"
        if not report.ok:
            raise DatasetValidationError(report)
        reports[role] = report.to_dict()
        ctx.check_stop()
    return {"reports": reports}


def prepare(ctx: StepContext) -> dict[str, Any]:
    """Resolve the base model and, with ``init_adapter``, the adapter to start from."""
    from tunelab.models import resolve_model
    from tunelab.registry.resolve import ModelNotFound, resolve
    from tunelab.services import Services

    config = DPOConfig(**ctx.job.config)
    base = resolve_model(config.base_model)
    out: dict[str, Any] = {"base_model": base.ref, "base_model_path": str(base.path)}
    if config.init_adapter is None:
        return out
    # The one resolver; a folder is accepted here because REST refuses one at submit
    # (tunelab.registry.resolve.check_request_config): only the operator's CLI can name it.
    try:
        target = resolve(Services(ctx.db, ctx.store), config.init_adapter, allow_folder=True)
    except ModelNotFound:
        target = None
    if target is None or target.adapter_dir is None:
        raise PermanentError(
            "init_adapter_not_found",
            f"init_adapter {config.init_adapter!r} is neither a registered tuned model nor an "
            "adapter bundle folder",
        )
    out["init_adapter_dir"] = str(Path(target.adapter_dir).resolve())
    if target.version is not None:
        out["init_adapter_version_id"] = target.version.id
    return out


def train(ctx: StepContext) -> dict[str, Any]:
    from tunelab.recipes.dpo import train_dpo
    from tunelab.recipes.sft import TrainingInterrupted

    config = DPOConfig(**ctx.job.config)
    prepared = ctx.outputs["prepare"]
    metrics_path = ctx.workdir / "metrics.jsonl"
    last_sync = 0.0

    def on_progress(p) -> None:
        nonlocal last_sync
        if p.phase != "training" or not p.total_steps:
            ctx.report(p.phase, 0.05, None)
            return
        now = time.monotonic()
        if now - last_sync >= 1.0 or p.step == p.total_steps:
            last_sync = now
            ctx.report(
                f"training step {p.step}/{p.total_steps}",
                0.05 + 0.85 * p.step / p.total_steps,
                p.eta_seconds,
            )
            ctx.on_metrics(metrics_path)

    init = prepared.get("init_adapter_dir")
    try:
        result = train_dpo(
            config,
            _dataset_path(ctx, "preference"),
            ctx.workdir,
            _dataset_path(ctx, "validation"),
            Path(init) if init else None,
            on_progress=on_progress,
            should_stop=ctx.should_stop,
        )
    except TrainingInterrupted as exc:
        raise StopRequested from exc
    except ValueError as exc:  # an init adapter on another base model
        raise PermanentError("invalid_init_adapter", str(exc)) from exc
    ctx.on_metrics(metrics_path)
    stored = ctx.store.put_dir(result.adapter_dir, f"jobs/{ctx.job.id}/adapter")
    usage = dict(result.usage)
    price = get_settings().price_per_1k_tokens
    usage["estimated_cost"] = (
        round(usage["billable_tokens"] / 1000 * price, 6) if price is not None else None
    )
    return {
        "adapter": {"uri": stored.uri, "sha256": stored.sha256, "size_bytes": stored.size_bytes},
        "usage": usage,
        "evaluation": result.evaluation,
        "final_train_loss": result.final_train_loss,
        "steps": result.steps,
    }


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """With validation pairs: the tuned model's DPO loss, reward accuracy and preferred-minus-
    rejected log-probability margin next to the reference's. Without them, skipped."""
    if _role(ctx, "validation") is None:
        return {"skipped": "no validation pairs"}
    return dict(ctx.outputs["train"]["evaluation"])


def register(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.models import register_version

    job, trained = ctx.job, ctx.outputs["train"]
    inputs = [("dataset", job.datasets[_role(ctx, "preference")], "preference")]
    if _role(ctx, "validation"):
        inputs.append(("dataset", job.datasets["validation"], "validation"))
    init_version = ctx.outputs["prepare"].get("init_adapter_version_id")
    if init_version:
        inputs.append(("model_version", init_version, "init_adapter"))
    version = register_version(
        ctx.db,
        name=job.tuned_model_name,
        method=job.method,
        base_model=job.base_model,
        adapter_uri=trained["adapter"]["uri"],
        adapter_sha256=trained["adapter"]["sha256"],
        adapter_size=trained["adapter"]["size_bytes"],
        config=job.config,
        data_stats=ctx.outputs["validate"]["reports"],
        metrics={k: trained.get(k) for k in ("final_train_loss", "steps")}
        | {"evaluation": ctx.outputs.get("evaluate")},
        source_job_id=job.id,
        inputs=inputs,
    )
    logger.info("registered %s version %d (dpo)", version.model_name, version.version)
    return {"model_version_id": version.id, "name": version.model_name, "version": version.version}


def deploy(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.endpoints import deploy_version

    endpoint = deploy_version(ctx.db, ctx.outputs["register"]["model_version_id"])
    return {"endpoint": endpoint.id}


register_pipeline(
    "dpo",
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
        "train": 0.85,
        "evaluate": 0.06,
        "register": 0.02,
        "deploy": 0.02,
    },
)

"""The reinforcement fine-tuning pipeline: validate -> prepare -> train -> evaluate -> register
-> deploy.

Datasets by role: ``train`` (prompts with the fields the grader reads) and optionally
``validation`` (held-out prompts: base vs tuned under the grader). The grader lives in the
job's config, so the stored job spec says exactly how answers were scored. A ``score_model``
grader's reward model is found through the registry (a registered name, never a folder) and
becomes an input of the tuned model's lineage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.configs.rft import RFTConfig
from tunelab.jobs import steps
from tunelab.jobs.errors import PermanentError
from tunelab.jobs.pipeline import StepContext
from tunelab.jobs.usage import job_usage


def _locator(ctx: StepContext):
    from tunelab.graders.score_model import registry_locator
    from tunelab.services import Services

    return registry_locator(Services(ctx.db, ctx.store))


def _reward_models(config: RFTConfig) -> list[str]:
    from tunelab.graders.spec import ScoreModel, walk

    return [g.model for g in walk(config.grader) if isinstance(g, ScoreModel)]


def validate(ctx: StepContext) -> dict[str, Any]:
    """Every dataset is read whole (any bad line, or one missing a field the grader reads, fails
    the job with its line numbers); the grader's Python files and reward models must exist."""
    from tunelab.data.rft import validate_rft_file
    from tunelab.graders.sandbox import GraderUnavailable, grader_file
    from tunelab.graders.spec import Python, walk
    from tunelab.models import load_tokenizer, resolve_model

    config = RFTConfig(**ctx.job.config)
    if "train" not in ctx.job.datasets:
        raise PermanentError("missing_dataset", "an RFT job needs a 'train' dataset of prompts")
    try:
        for spec in walk(config.grader):
            if isinstance(spec, Python):
                grader_file(spec.source)
        locate = _locator(ctx)
        for ref in _reward_models(config):
            locate(ref)
    except (GraderUnavailable, ValueError) as exc:
        raise PermanentError("invalid_grader", str(exc)) from exc
    tokenizer = load_tokenizer(resolve_model(config.base_model).path)

    def check(path):
        return validate_rft_file(
            path,
            tokenizer,
            config.grader,
            prompt_sequence_length=config.prompt_sequence_length,
            instruction=config.instruction,
        )

    return steps.validate_datasets(ctx, {role: (role, check) for role in ("train", "validation")})


def prepare(ctx: StepContext) -> dict[str, Any]:
    """Resolve (and, once, convert) the base model; note the reward models the grader uses."""
    from tunelab.models import resolve_model

    config = RFTConfig(**ctx.job.config)
    base = resolve_model(config.base_model)
    locate = _locator(ctx)
    return {
        "base_model": base.ref,
        "base_model_path": str(base.path),
        "reward_models": {ref: str(locate(ref)) for ref in _reward_models(config)},
    }


def train(ctx: StepContext) -> dict[str, Any]:
    from tunelab.recipes.rft import train_rft

    config = RFTConfig(**ctx.job.config)
    located = ctx.outputs["prepare"].get("reward_models", {})
    result = steps.train_in_job(
        ctx,
        lambda *a, **kw: train_rft(*a, locate_model=lambda ref: Path(located[ref]), **kw),
        config,
        steps.dataset_path(ctx, "train"),
        ctx.workdir,
        share=0.80,
    )
    return {
        "adapter": steps.store_dir(ctx, result.adapter_dir, "adapter"),
        "usage": job_usage(result.usage, ctx.outputs["validate"]["reports"]["train"]),
        "final_train_loss": result.final_train_loss,
        "steps": result.steps,
        "last": result.last,
        "grader_failures": result.grader_failures,
    }


def evaluate(ctx: StepContext) -> dict[str, Any]:
    """With validation prompts: base and tuned answer greedily, the grader scores both; mean
    reward and pass rate with bootstrap 95% intervals. Without them, skipped."""
    from tunelab.recipes.rft import evaluate_rft

    path = steps.dataset_path(ctx, "validation")
    if path is None:
        return {"skipped": "no validation prompts"}
    ctx.report("evaluating: tuned vs base under the grader", 0.86, None)
    located = ctx.outputs["prepare"].get("reward_models", {})
    return evaluate_rft(
        ctx.store.local_path(ctx.outputs["train"]["adapter"]["uri"]),
        path,
        locate_model=lambda ref: Path(located[ref]),
    )


def register(ctx: StepContext) -> dict[str, Any]:
    from tunelab.registry.resolve import resolve
    from tunelab.services import Services

    job, trained = ctx.job, ctx.outputs["train"]
    inputs = [("dataset", job.datasets["train"], "train")]
    if "validation" in job.datasets:
        inputs.append(("dataset", job.datasets["validation"], "validation"))
    for ref in _reward_models(RFTConfig(**job.config)):
        version = resolve(Services(ctx.db, ctx.store), ref).version
        if version is not None:
            inputs.append(("model_version", version.id, "score_model"))
    evaluation = ctx.outputs.get("evaluate") or {}
    metrics = {k: trained.get(k) for k in ("final_train_loss", "steps", "grader_failures")}
    metrics |= {"last_step": trained.get("last")}
    metrics |= {"evaluation": {k: v for k, v in evaluation.items() if k != "examples"}}
    version = steps.register_adapter(ctx, trained["adapter"], metrics, inputs)
    return steps.registered(version)


def summary(outputs: dict[str, dict[str, Any]]) -> list[str]:
    """The CLI's last lines: pass rate and mean reward, base -> tuned, with their intervals."""
    evaluation = outputs.get("evaluate", {})
    if "pass_rate_tuned" not in evaluation:
        return []

    def interval(i: dict[str, float]) -> str:
        return f"{i['value']:.3f} [{i['low']:.3f}, {i['high']:.3f}]"

    lines = [f"held-out prompts ({evaluation['prompts']}), 95% bootstrap intervals:"]
    for key, label in (("pass_rate", "pass rate"), ("mean_reward", "mean reward")):
        lines.append(
            f"  {label}: base {interval(evaluation[key + '_base'])} -> "
            f"tuned {interval(evaluation[key + '_tuned'])}"
        )
    return lines


PIPELINE = steps.standard_pipeline(
    "rft",
    validate,
    prepare,
    train,
    evaluate,
    register,
    weights={"train": 0.80, "evaluate": 0.11},
    summary=summary,
)

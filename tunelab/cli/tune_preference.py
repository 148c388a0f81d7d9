"""``tunelab tune rlhf`` and ``tunelab tune dpo``: preference tuning in one command each. Like
``tune sft`` they submit a job (the same command finds the same job, by an idempotency key made
from its inputs) and run it in this process; interrupted, the same command resumes it."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import typer

from tunelab.cli.tune import app, config_errors, console, fail, run_in_process
from tunelab.config import DEFAULT_BASE_MODEL
from tunelab.configs.dpo import DPOConfig
from tunelab.configs.rlhf import RLHFConfig


def _default(cls, name: str):
    return cls.model_fields[name].default


def _help(cls, name: str) -> str:
    return cls.model_fields[name].description or ""


@app.command("rlhf")
def rlhf(
    preference: Path = typer.Option(
        ..., "--preference", exists=True, dir_okay=False, help="Human-preference pairs (JSONL)."
    ),
    prompts: Path = typer.Option(
        ..., "--prompts", exists=True, dir_okay=False, help="Prompts for reinforcement learning."
    ),
    name: str = typer.Option(
        ..., "--name", help="Name of the tuned model: 1-128 letters, digits, -_. (no / or @)."
    ),
    eval_prompts: Path | None = typer.Option(
        None, "--eval", exists=True, dir_okay=False, help="Held-out prompts: tuned vs base."
    ),
    base: str = typer.Option(DEFAULT_BASE_MODEL, "--base", help="Base model."),
    reward_model_train_steps: int = typer.Option(
        _default(RLHFConfig, "reward_model_train_steps"), "--reward-model-train-steps"
    ),
    reward_model_learning_rate_multiplier: float = typer.Option(
        1.0,
        "--reward-model-learning-rate-multiplier",
        help=_help(RLHFConfig, "reward_model_learning_rate_multiplier"),
    ),
    reinforcement_learning_train_steps: int = typer.Option(
        _default(RLHFConfig, "reinforcement_learning_train_steps"),
        "--reinforcement-learning-train-steps",
    ),
    reinforcement_learning_rate_multiplier: float = typer.Option(
        1.0,
        "--reinforcement-learning-rate-multiplier",
        help=_help(RLHFConfig, "reinforcement_learning_rate_multiplier"),
    ),
    kl_coeff: float = typer.Option(0.1, "--kl-coeff", help=_help(RLHFConfig, "kl_coeff")),
    prompt_sequence_length: int = typer.Option(
        512, "--prompt-sequence-length", help=_help(RLHFConfig, "prompt_sequence_length")
    ),
    target_sequence_length: int = typer.Option(
        64, "--target-sequence-length", help=_help(RLHFConfig, "target_sequence_length")
    ),
    instruction: str | None = typer.Option(
        None, "--instruction", help=_help(RLHFConfig, "instruction")
    ),
    adapter_size: int = typer.Option(8, "--adapter-size", help="LoRA rank: 1, 2, 4, 8 or 16."),
    prompts_per_step: int = typer.Option(4, "--prompts-per-step"),
    samples_per_prompt: int = typer.Option(
        4, "--samples-per-prompt", help=_help(RLHFConfig, "samples_per_prompt")
    ),
    checkpoint_every_steps: int = typer.Option(10, "--checkpoint-every-steps"),
    seed: int = typer.Option(42, "--seed"),
    processes: int = typer.Option(
        1, "--processes", "--workers", help="Training processes (data parallel); same result."
    ),
    detach: bool = typer.Option(False, "--detach", help="Only submit; a `tunelab worker` runs it."),
    restart: bool = typer.Option(False, "--restart", help="Tune again even if this already ran."),
) -> None:
    """RLHF as a job: reward model, then RLOO against it with a KL penalty. Same command resumes."""
    from pydantic import ValidationError

    try:
        config = RLHFConfig(
            base_model=base,
            reward_model_train_steps=reward_model_train_steps,
            reward_model_learning_rate_multiplier=reward_model_learning_rate_multiplier,
            reinforcement_learning_train_steps=reinforcement_learning_train_steps,
            reinforcement_learning_rate_multiplier=reinforcement_learning_rate_multiplier,
            kl_coeff=kl_coeff,
            prompt_sequence_length=prompt_sequence_length,
            target_sequence_length=target_sequence_length,
            instruction=instruction,
            adapter_size=adapter_size,
            prompts_per_step=prompts_per_step,
            samples_per_prompt=samples_per_prompt,
            checkpoint_every_steps=checkpoint_every_steps,
            seed=seed,
            processes=processes,
        )
    except ValidationError as exc:
        fail(config_errors(exc))
    datasets = {"preference": preference, "prompts": prompts, "eval": eval_prompts}
    job_id = _submit(config, name, datasets, restart)
    if detach:
        print(job_id)
        return
    services = _services()
    run_in_process(services, job_id)
    _summary(services, job_id)


@app.command("dpo")
def dpo(
    preference: Path = typer.Option(
        ..., "--preference", exists=True, dir_okay=False, help="Human-preference pairs (JSONL)."
    ),
    name: str = typer.Option(
        ..., "--name", help="Name of the tuned model: 1-128 letters, digits, -_. (no / or @)."
    ),
    validation: Path | None = typer.Option(
        None, "--validation", exists=True, dir_okay=False, help="Held-out preference pairs."
    ),
    base: str = typer.Option(
        DEFAULT_BASE_MODEL,
        "--base",
        help="Base model; or a tuned model NAME[@VERSION] (e.g. an SFT model) to start from.",
    ),
    init_adapter: str | None = typer.Option(
        None, "--init-adapter", help=_help(DPOConfig, "init_adapter")
    ),
    beta: float = typer.Option(0.1, "--beta", help=_help(DPOConfig, "beta")),
    epochs: int | None = typer.Option(None, help="Passes over the pairs (default 1)."),
    train_steps: int | None = typer.Option(None, "--train-steps", help="Steps, instead of epochs."),
    learning_rate_multiplier: float = typer.Option(
        1.0, "--learning-rate-multiplier", help=_help(DPOConfig, "learning_rate_multiplier")
    ),
    adapter_size: int = typer.Option(8, "--adapter-size", help="LoRA rank: 1, 2, 4, 8 or 16."),
    batch_size: int = typer.Option(8, "--batch-size"),
    prompt_sequence_length: int = typer.Option(512, "--prompt-sequence-length"),
    target_sequence_length: int = typer.Option(512, "--target-sequence-length"),
    eval_every_steps: int = typer.Option(20, "--eval-every-steps"),
    checkpoint_every_steps: int = typer.Option(20, "--checkpoint-every-steps"),
    seed: int = typer.Option(42, "--seed"),
    processes: int = typer.Option(
        1, "--processes", "--workers", help="Training processes (data parallel); same result."
    ),
    detach: bool = typer.Option(False, "--detach", help="Only submit; a `tunelab worker` runs it."),
    restart: bool = typer.Option(False, "--restart", help="Tune again even if this already ran."),
) -> None:
    """DPO of a LoRA adapter as a job, optionally from a supervised adapter. Same command resumes."""
    from pydantic import ValidationError

    try:
        config = DPOConfig(
            base_model=base,
            init_adapter=init_adapter,
            beta=beta,
            epochs=epochs,
            train_steps=train_steps,
            learning_rate_multiplier=learning_rate_multiplier,
            adapter_size=adapter_size,
            batch_size=batch_size,
            prompt_sequence_length=prompt_sequence_length,
            target_sequence_length=target_sequence_length,
            eval_every_steps=eval_every_steps,
            checkpoint_every_steps=checkpoint_every_steps,
            seed=seed,
            processes=processes,
        )
    except ValidationError as exc:
        fail(config_errors(exc))
    job_id = _submit(config, name, {"preference": preference, "validation": validation}, restart)
    if detach:
        print(job_id)
        return
    services = _services()
    run_in_process(services, job_id)
    _summary(services, job_id)


def _services():
    from tunelab.services import open_services

    return open_services()


def _submit(config, name: str, datasets: dict[str, Path | None], restart: bool) -> str:
    """Submit the job; the same name, parameters and dataset bytes find the same job."""
    from tunelab.bundle import sha256_file
    from tunelab.jobs.submit import submit_job
    from tunelab.registry.continuation import ContinuationError
    from tunelab.registry.names import InvalidModelName, check_tuned_model_name

    try:
        check_tuned_model_name(name)
    except InvalidModelName as exc:
        fail(f"--name: {exc}")
    key_src = json.dumps(
        {
            "name": name,
            "config": config.model_dump(mode="json"),
            "data": {role: sha256_file(p) if p else None for role, p in datasets.items()},
        },
        sort_keys=True,
    )
    key = "cli-" + hashlib.sha256(key_src.encode()).hexdigest()[:32]
    if restart:
        key += "-" + uuid.uuid4().hex[:8]
    services = _services()
    try:
        job, created = submit_job(
            services.db,
            services.artifacts,
            config=config,
            name=name,
            datasets=datasets,
            idempotency_key=key,
        )
    except ContinuationError as exc:
        fail(str(exc))
    console.print(
        f"{'submitted' if created else 'found'} {config.method} job {job.id} ({job.state})"
    )
    return job.id


def _summary(services, job_id: str) -> None:
    """What the pipeline measured: reward-model accuracy, tuned vs base, DPO margins."""
    from tunelab.jobs import store

    outputs = {s.name: s.outputs or {} for s in store.steps_of(services.db, job_id)}
    reward = outputs.get("reward_model", {})
    if reward.get("pairwise_accuracy") is not None:
        console.print(
            f"reward model: pairwise accuracy {reward['pairwise_accuracy']:.1%} on "
            f"{reward['eval_pairs']} held-out pairs ({outputs.get('register', {}).get('reward_model')})"
        )
    evaluation = outputs.get("evaluate", {})
    if "win_rate" in evaluation:
        console.print(
            f"held-out prompts ({evaluation['prompts']}): mean reward base "
            f"{evaluation['mean_reward_base']:.3f} -> tuned {evaluation['mean_reward_tuned']:.3f}, "
            f"tuned wins {evaluation['win_rate']:.1%}"
        )
    if "eval_logp_margin" in evaluation:
        console.print(
            f"held-out pairs: log-prob margin preferred - rejected "
            f"{evaluation['eval_reference_logp_margin']:.2f} (reference) -> "
            f"{evaluation['eval_logp_margin']:.2f} (tuned), reward accuracy "
            f"{evaluation['eval_reward_accuracy']:.1%}"
        )

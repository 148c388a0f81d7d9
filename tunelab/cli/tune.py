"""``tunelab tune sft``: tune a model in one command. It submits a tuning job and runs it in
this process (no separate worker needed), showing the job's progress; interrupted, the same
command finds the same job (by an idempotency key made from the command's inputs) and resumes it."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from tunelab.config import DEFAULT_BASE_MODEL

app = typer.Typer(help="Tune a model.", no_args_is_help=True)
console = Console(stderr=True)


@app.command("sft")
def sft(
    train: Path = typer.Option(..., "--train", exists=True, dir_okay=False, help="Training JSONL."),
    name: str = typer.Option(
        ..., "--name", help="Name of the tuned model: 1-128 letters, digits, -_. (no / or @)."
    ),
    validation: Path | None = typer.Option(
        None, "--validation", exists=True, dir_okay=False, help="Validation JSONL."
    ),
    base: str = typer.Option(
        DEFAULT_BASE_MODEL,
        "--base",
        help="Base model: catalog name, folder or hub id; or a tuned model NAME[@VERSION] to "
        "continue tuning from its adapter.",
    ),
    epochs: int | None = typer.Option(None, help="Passes over the data (default 3)."),
    train_steps: int | None = typer.Option(
        None, "--train-steps", help="Optimizer steps, instead of epochs."
    ),
    learning_rate_multiplier: float = typer.Option(1.0, "--learning-rate-multiplier"),
    adapter_size: int = typer.Option(8, "--adapter-size", help="LoRA rank: 1, 2, 4, 8 or 16."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_seq_length: int = typer.Option(1024, "--max-seq-length"),
    seed: int = typer.Option(42, "--seed"),
    processes: int = typer.Option(
        1, "--processes", "--workers", help="Training processes (data parallel); same result."
    ),
    eval_every_steps: int = typer.Option(20, "--eval-every-steps"),
    checkpoint_every_steps: int = typer.Option(20, "--checkpoint-every-steps"),
    early_stopping_patience: int | None = typer.Option(
        3, "--early-stopping-patience", help="0 disables."
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto, fp32 or bf16 (mixed precision). auto takes bf16 where it is clearly faster.",
    ),
    detach: bool = typer.Option(
        False, "--detach", help="Only submit the job; a `tunelab worker` runs it."
    ),
    restart: bool = typer.Option(
        False, "--restart", help="Tune again even if this command already ran."
    ),
) -> None:
    """Supervised tuning of a LoRA adapter, as a job. Run the same command again to resume."""
    from pydantic import ValidationError

    from tunelab.bundle import sha256_file
    from tunelab.configs import SFTConfig
    from tunelab.jobs.submit import submit_job
    from tunelab.registry.continuation import ContinuationError
    from tunelab.services import open_services

    try:
        config = SFTConfig(
            base_model=base,
            epochs=epochs,
            train_steps=train_steps,
            learning_rate_multiplier=learning_rate_multiplier,
            adapter_size=adapter_size,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            seed=seed,
            processes=processes,
            eval_every_steps=eval_every_steps,
            checkpoint_every_steps=checkpoint_every_steps,
            early_stopping_patience=early_stopping_patience or None,
            precision=precision,
        )
    except ValidationError as exc:
        fail(config_errors(exc))
    from tunelab.training.launch import follow, torchrun_follower

    if torchrun_follower():  # `torchrun ... -m tunelab.cli tune sft ...`: rank 0 is the job
        from tunelab.recipes.sft import train_sft

        return follow(train_sft, config, train, validation)
    from tunelab.registry.names import InvalidModelName, check_tuned_model_name

    try:
        check_tuned_model_name(name)
    except InvalidModelName as exc:
        fail(f"--name: {exc}")

    # The same command (name, parameters, dataset bytes) maps to the same job.
    key_src = json.dumps(
        {
            "name": name,
            "config": config.model_dump(mode="json"),
            "data": [sha256_file(train), sha256_file(validation) if validation else None],
        },
        sort_keys=True,
    )
    key = "cli-" + hashlib.sha256(key_src.encode()).hexdigest()[:32]
    if restart:
        key += "-" + uuid.uuid4().hex[:8]
    services = open_services()
    try:
        job, created = submit_job(
            services.db,
            services.artifacts,
            config=config,
            name=name,
            datasets={"train": train, "validation": validation},
            idempotency_key=key,
        )
    except ContinuationError as exc:
        fail(str(exc))
    console.print(f"{'submitted' if created else 'found'} tuning job {job.id} ({job.state})")
    if detach:
        print(job.id)
        return
    run_in_process(services, job.id)


def run_in_process(services, job_id: str) -> None:
    """Run a job here with a worker of our own, drawing its progress; Ctrl-C checkpoints and
    requeues it (a second Ctrl-C aborts at once)."""
    from tunelab.jobs import store
    from tunelab.jobs.states import TERMINAL
    from tunelab.jobs.worker import Worker

    job = store.get_job(services.db, job_id)
    if job.state == "SUCCEEDED":
        console.print(
            f"[green]already tuned[/]: {job.tuned_model_name} version {job.tuned_model_version} "
            "(use --restart to tune again)"
        )
        return
    if job.state in TERMINAL:
        show_error(job)
        fail(f"job {job.id} is {job.state}; use --restart to tune again")
    worker = Worker(services.db, services.artifacts)

    def on_sigint(signum, frame):
        if worker.shutdown.is_set():
            raise KeyboardInterrupt
        worker.shutdown.set()
        console.print(
            "[yellow]stopping after this step with a checkpoint (Ctrl-C again to abort)[/]"
        )

    # Both handlers are put back afterwards: a SIGTERM handler left behind would outlive the
    # command (in the server, or in a process forked later) and turn every SIGTERM into a no-op.
    previous = {sig: signal.signal(sig, on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(worker.run_job(job_id)), daemon=True)
    bar = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with bar:
            task = bar.add_task("starting", total=100, info="")
            runner.start()
            while runner.is_alive():
                runner.join(0.5)
                j = store.get_job(services.db, job_id)
                eta = f"ETA {j.eta_seconds:.0f}s" if j.eta_seconds else ""
                metrics = (
                    store.metrics_of(services.db, job_id)[-1:]
                    if j.step and "training" in j.step
                    else []
                )
                loss = (
                    f"loss {metrics[0]['train_loss']:.3f}"
                    if metrics and "train_loss" in metrics[0]
                    else ""
                )
                bar.update(
                    task,
                    description=j.step or j.state.lower(),
                    completed=100 * j.progress,
                    info="  ".join(x for x in (loss, eta) if x),
                )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not outcome or outcome[0] is None:
        holder = store.get_job(services.db, job_id)
        fail(f"job {job_id} is {holder.state} and held by another worker ({holder.worker_id})")
    job = store.get_job(services.db, job_id)
    if job.state == "SUCCEEDED":
        usage = job.usage or {}
        console.print(
            f"[green]tuned model {job.tuned_model_name!r} version {job.tuned_model_version}[/] "
            f"(job {job.id}, endpoint {job.endpoint})"
        )
        console.print(
            f"{usage.get('trained_tokens', 0)} tokens trained in {usage.get('train_seconds', 0):.0f}s"
        )
        console.print(f'try it: tunelab predict --model {job.tuned_model_name} "..."')
        return
    if job.state == "QUEUED":
        console.print(
            f"[yellow]job {job.id} stopped with a checkpoint; run the same command again to resume[/]"
        )
        raise typer.Exit(130)
    show_error(job)
    fail(f"job {job.id} ended {job.state}")


def show_error(job) -> None:
    if job.error:
        console.print(f"[red]{job.error['code']}[/]: {job.error['message']}", highlight=False)
        for err in (job.error.get("details") or {}).get("errors", [])[:50]:
            if isinstance(err, dict) and "line" in err:
                console.print(
                    f"  line {err['line']}: {err.get('field') or ''} {err['message']}",
                    highlight=False,
                )


def config_errors(exc) -> str:
    lines = [
        f"  --{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
        for e in exc.errors()
    ]
    return "invalid tuning parameters:\n" + "\n".join(lines)


def fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)

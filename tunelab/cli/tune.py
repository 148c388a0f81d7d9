"""``tunelab tune <method>``: tune a model in one command, one command per method of the method
table (tunelab/jobs/methods.py). Each submits a tuning job and runs it in this process (no
separate worker needed), showing the job's progress; interrupted, the same command finds the same
job (by an idempotency key made from the command's inputs) and resumes it.

The commands are generated: a dataset option per dataset role of the method, and an option per
field of the method's config, from its JSON schema (tunelab/cli/config_options.py), so a config
field is written once and a new field or method needs no code here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from tunelab.cli.config_options import JsonFileError, config_options, config_values
from tunelab.jobs.methods import METHODS, MethodSpec

app = typer.Typer(help="Tune a model.", no_args_is_help=True)
console = Console(stderr=True)


def role_flag(role: str) -> str:
    """The option that gives a dataset of ``role`` (``--train-labels`` for train_labels)."""
    return "--" + role.replace("_", "-")


def _command_help(spec: MethodSpec) -> str:
    doc = inspect.getdoc(spec.config) or ""
    first = " ".join(doc.split("\n\n")[0].split()).replace("``", "`")
    return f"{first} As a job; run the same command again to resume it."


def method_command(method: str, spec: MethodSpec) -> Callable[..., None]:
    """The ``tune <method>`` command: options from the method's dataset roles and config schema."""
    options = config_options(spec.config)
    params: list[inspect.Parameter] = []
    annotations: dict[str, Any] = {}
    seen: set[str] = set()

    def add(pname: str, annotation: Any, option: Any, flags: tuple[str, ...]) -> None:
        clash = seen.intersection(flags)
        if clash:  # e.g. a config field named like a dataset role
            raise ValueError(f"tune {method}: option {clash.pop()} is declared twice")
        seen.update(flags)
        params.append(
            inspect.Parameter(
                pname, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
            )
        )
        annotations[pname] = annotation

    for role in spec.dataset_roles:
        flags = (role_flag(role.name),)
        default = ... if role.required else None
        option = typer.Option(default, *flags, exists=True, dir_okay=False, help=role.description)
        add(f"data_{role.name}", Path if role.required else Path | None, option, flags)
    add(
        "name",
        str,
        typer.Option(
            ..., "--name", help="Name of the tuned model: 1-128 letters, digits, -_. (no / or @)."
        ),
        ("--name",),
    )
    for opt in options:
        add(opt.param, opt.annotation, opt.option, opt.flags)
    add(
        "node_rank",
        int,
        typer.Option(
            0,
            "--node-rank",
            min=0,
            help="This machine's place among --nodes: 0 runs the job; 1..nodes-1 train beside "
            "it (the same command, the same data files) and write nothing.",
        ),
        ("--node-rank",),
    )
    add(
        "detach",
        bool,
        typer.Option(False, "--detach", help="Only submit the job; a `tunelab worker` runs it."),
        ("--detach",),
    )
    add(
        "restart",
        bool,
        typer.Option(False, "--restart", help="Tune again even if this command already ran."),
        ("--restart",),
    )

    def command(**kwargs: Any) -> None:
        from pydantic import ValidationError

        try:
            config = spec.config(**config_values(options, kwargs))
        except JsonFileError as exc:
            fail(str(exc))
        except ValidationError as exc:
            fail(config_errors(exc))
        datasets = {role.name: kwargs[f"data_{role.name}"] for role in spec.dataset_roles}
        from tunelab.training.launch import torchrun_follower

        node_rank = kwargs["node_rank"]
        if node_rank >= getattr(config, "nodes", 1):
            fail(f"--node-rank {node_rank}: machines are numbered 0..nodes-1 (--nodes)")
        if node_rank > 0 or torchrun_follower():  # rank 0 is the job; this rank trains beside
            from tunelab.cli.tune_follower import follow_job
            from tunelab.training.distributed import RankFailed

            try:
                return follow_job(method, config, datasets, node_rank)
            except (ValueError, RankFailed) as exc:
                fail(str(exc))
        name = kwargs["name"]
        key = command_key(name, config, datasets, restart=kwargs["restart"])
        services = _services()
        job, _ = submit(services, config, name, datasets, idempotency_key=key)
        if kwargs["detach"]:
            print(job.id)
            return
        run_in_process(services, job.id)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__name__ = method
    command.__doc__ = _command_help(spec)
    return command


def add_method_commands(tune_app: typer.Typer, methods: dict[str, MethodSpec]) -> None:
    for method, spec in methods.items():
        tune_app.command(method)(method_command(method, spec))


add_method_commands(app, METHODS)


def _services():
    from tunelab.services import open_services

    return open_services()


def command_key(name: str, config, datasets: dict[str, Path | None], restart: bool) -> str:
    """The idempotency key of a command: the same name, parameters and dataset bytes find the
    same job; ``restart`` makes a new one."""
    from tunelab.bundle import sha256_file

    key_src = json.dumps(
        {
            "name": name,
            "config": config.model_dump(mode="json"),
            "data": {role: sha256_file(p) if p else None for role, p in datasets.items()},
        },
        sort_keys=True,
    )
    key = "cli-" + hashlib.sha256(key_src.encode()).hexdigest()[:32]
    return key + "-" + uuid.uuid4().hex[:8] if restart else key


def submit(
    services, config, name: str, datasets: dict[str, Path | None], idempotency_key: str | None
):
    """Submit a job from the command line (every CLI verb that makes a job comes here): the
    tuned-model name checked first, errors as one red line and exit code 1. (job, created)."""
    from tunelab.jobs.methods import DatasetRoleError
    from tunelab.jobs.submit import submit_job
    from tunelab.registry.continuation import ContinuationError
    from tunelab.registry.names import InvalidModelName, check_tuned_model_name

    try:
        check_tuned_model_name(name)
    except InvalidModelName as exc:
        fail(f"--name: {exc}")
    check_devices(config)
    try:
        job, created = submit_job(
            services.db,
            services.artifacts,
            config=config,
            name=name,
            datasets=datasets,
            idempotency_key=idempotency_key,
        )
    except ContinuationError as exc:
        fail(str(exc))
    except DatasetRoleError as exc:
        fail("\n".join(f"{role_flag(role)}: {message}" for role, message in exc.problems))
    console.print(
        f"{'submitted' if created else 'found'} {config.method} job {job.id} ({job.state})"
    )
    return job, created


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
        show_summary(services, job)
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
        deployed = next(
            (s for s in store.steps_of(services.db, job.id) if s.name == "deploy"), None
        )
        if deployed is not None and deployed.outputs.get("reason"):
            console.print(deployed.outputs["reason"])
        console.print(
            f"{usage.get('trained_tokens', 0)} tokens trained in {usage.get('train_seconds', 0):.0f}s"
        )
        show_summary(services, job)
        ref = f"{job.tuned_model_name}@{job.tuned_model_version}"
        console.print(f'try it: tunelab predict --model {ref} "..."')
        return
    if job.state == "QUEUED":
        console.print(
            f"[yellow]job {job.id} stopped with a checkpoint; run the same command again to resume[/]"
        )
        raise typer.Exit(130)
    show_error(job)
    fail(f"job {job.id} ended {job.state}")


def show_summary(services, job) -> None:
    """What the job's pipeline says it measured (reward accuracy, tuned vs base, retrieval)."""
    from tunelab.jobs import store
    from tunelab.jobs.methods import METHODS

    spec = METHODS.get(job.method)
    summary = spec.load_pipeline().summary if spec else None
    if summary is None:
        return
    outputs = {s.name: s.outputs or {} for s in store.steps_of(services.db, job.id)}
    for line in summary(outputs):
        console.print(line, highlight=False, markup=False)


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
        if e["loc"]
        else f"  {e['msg']}"  # a rule across fields, e.g. epochs or train_steps, not both
        for e in exc.errors()
    ]
    return "invalid tuning parameters:\n" + "\n".join(lines)


def check_devices(config) -> None:
    """Fail before submitting when this machine lacks the accelerator/devices asked for."""
    from tunelab.jobs.submit import check_accelerator
    from tunelab.models.device import AcceleratorUnavailable

    try:
        check_accelerator(config)
    except AcceleratorUnavailable as exc:
        fail(f"--{exc.field}: {exc}")


def fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)

"""``tunelab jobs ...`` and ``tunelab worker``: the tuning-job queue from the command line."""

from __future__ import annotations

import inspect
import json
import signal
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.tune import config_errors, fail, role_flag, run_in_process, show_error

app = typer.Typer(help="Submit, watch and control tuning jobs.", no_args_is_help=True)
out = Console()


def dataset_roles() -> dict[str, list[tuple[str, str]]]:
    """Every dataset role of the method table (tunelab/jobs/methods.py), with the methods that
    take it and what it holds there: {role: [(method, description), ...]}."""
    from tunelab.jobs.methods import METHODS

    roles: dict[str, list[tuple[str, str]]] = {}
    for method, spec in METHODS.items():
        for role in spec.dataset_roles:
            roles.setdefault(role.name, []).append((method, role.description))
        for alias, target in spec.role_aliases.items():
            roles.setdefault(alias, []).append((method, f"As {role_flag(target)}."))
    return roles


def _method_names() -> list[str]:
    from tunelab.jobs.methods import METHODS

    return list(METHODS)


def submit_command():
    """``jobs submit``: a dataset option per role of any method (``--train``, ``--preference``,
    ``--prompts``, ``--corpus``, ``--train-labels``...), generated from the method table as the
    ``tune <method>`` commands are; which of them a job takes, its method says (checked by
    tunelab.jobs.methods.check_dataset_roles, with the other faces)."""
    roles = dataset_roles()
    params = [
        inspect.Parameter(
            "name",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(..., "--name", help="Tuned model name."),
            annotation=str,
        ),
        inspect.Parameter(
            "method",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                "sft", "--method", help=f"Tuning method: one of {', '.join(_method_names())}."
            ),
            annotation=str,
        ),
    ]
    for role, uses in roles.items():
        about = " ".join(f"{method}: {text}" for method, text in uses)
        option = typer.Option(None, role_flag(role), exists=True, dir_okay=False, help=about)
        params.append(
            inspect.Parameter(
                f"data_{role}",
                inspect.Parameter.KEYWORD_ONLY,
                default=option,
                annotation=Path | None,
            )
        )
    params += [
        inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--config",
                exists=True,
                dir_okay=False,
                help="JSON file with the method's parameters.",
            ),
            annotation=Path | None,
        ),
        inspect.Parameter(
            "idempotency_key",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--idempotency-key", max=128),
            annotation=str | None,
        ),
    ]

    def submit(**kwargs: Any) -> None:
        """Queue a job for `tunelab worker`; prints its id. Give each of the method's datasets
        by its role (`tunelab tune METHOD --help` lists them)."""
        from pydantic import ValidationError

        from tunelab.cli.tune import submit as submit_from_cli
        from tunelab.jobs.methods import (
            DatasetRoleError,
            UnknownMethod,
            check_dataset_roles,
            method_spec,
        )
        from tunelab.services import open_services

        method, config_file = kwargs["method"], kwargs["config_file"]
        try:
            spec = method_spec(method)
        except UnknownMethod as exc:
            fail(f"--method: {exc}")
        datasets = {r: kwargs[f"data_{r}"] for r in roles if kwargs[f"data_{r}"] is not None}
        try:  # before the config: the datasets are what a wrong --method shows first
            check_dataset_roles(method, datasets)
        except DatasetRoleError as exc:
            fail("\n".join(f"{role_flag(r)}: {message}" for r, message in exc.problems))
        try:
            params = json.loads(config_file.read_text()) if config_file else {}
        except ValueError as exc:
            fail(f"--config {config_file}: not JSON ({exc})")
        if not isinstance(params, dict):
            fail(f"--config {config_file}: expected a JSON object of the method's parameters")
        try:
            config = spec.config(**params)
        except ValidationError as exc:
            fail(config_errors(exc))
        job, _ = submit_from_cli(
            open_services(),
            config,
            kwargs["name"],
            datasets,
            idempotency_key=kwargs["idempotency_key"],
        )
        print(job.id)

    submit.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    submit.__annotations__ = {p.name: p.annotation for p in params}
    return submit


app.command("submit")(submit_command())


@app.command("list")
def list_(state: str | None = typer.Option(None, "--state"), limit: int = 50) -> None:
    from tunelab.jobs import store
    from tunelab.services import open_services

    table = Table("id", "name", "method", "state", "step", "progress", "ETA", "created")
    for j in store.list_jobs(open_services().db, state=state, limit=limit):
        table.add_row(
            j.id,
            j.display_name,
            j.method,
            j.state,
            j.step or "",
            f"{100 * j.progress:.0f}%",
            f"{j.eta_seconds:.0f}s" if j.eta_seconds else "",
            f"{j.created_at:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)


@app.command("show")
def show(job_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    from tunelab.jobs.views import job_view
    from tunelab.services import open_services

    view = job_view(open_services().db, _job(job_id))
    if as_json:
        print(json.dumps(view, indent=2, default=str))
        return
    out.print(
        f"[bold]{view['id']}[/] {view['display_name']} ({view['method']}): [bold]{view['state']}[/]"
        + (f"  {view['step']}" if view["step"] else "")
        + f"  {100 * view['progress']:.0f}%"
    )
    steps = Table("step", "state", "outputs")
    for s in view["pipeline"]:
        outputs = ", ".join(
            f"{k}={v['uri']}" for k, v in s["outputs"].items() if isinstance(v, dict) and "uri" in v
        )
        steps.add_row(s["name"], s["state"], outputs)
    out.print(steps)
    if view["usage"]:
        out.print("usage: " + ", ".join(f"{k}={v}" for k, v in view["usage"].items()))
    if view["tuned_model"]:
        out.print(f"tuned model: {view['tuned_model']}  endpoint: {view['endpoint']}")
    if view["error"]:
        show_error(_job(job_id))


@app.command("logs")
def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f")) -> None:
    """Events of a job (and its metrics as they come, with --follow)."""
    from tunelab.jobs import store
    from tunelab.jobs.states import TERMINAL
    from tunelab.services import open_services

    db = open_services().db
    last_event, last_metric = 0, 0
    while True:
        for e in store.events_of(db, job_id, after_id=last_event):
            out.print(f"{e.time:%H:%M:%S} [{e.kind}] {e.message}", highlight=False)
            last_event = e.id
        rows = store.metrics_of(db, job_id)
        for r in rows[last_metric:]:
            out.print(
                "  "
                + "  ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                ),
                highlight=False,
            )
        last_metric = len(rows)
        if not follow or store.get_job(db, job_id).state in TERMINAL:
            return
        time.sleep(1.0)


def _action(verb: str):
    def command(job_id: str) -> None:
        from tunelab.jobs import store
        from tunelab.jobs.states import IllegalTransition
        from tunelab.services import open_services

        fn = {"cancel": store.request_cancel, "pause": store.request_pause, "resume": store.resume}[
            verb
        ]
        try:
            job = fn(open_services().db, job_id)
        except (IllegalTransition, store.JobNotFound) as exc:
            fail(str(exc))
        out.print(
            f"{job.id}: {job.state}"
            + (f" ({job.requested_action} requested)" if job.requested_action else "")
        )

    command.__doc__ = f"{verb.capitalize()} a job."
    return command


for _verb in ("cancel", "pause", "resume"):
    app.command(_verb)(_action(_verb))


def _job(job_id: str):
    from tunelab.jobs import store
    from tunelab.services import open_services

    try:
        return store.get_job(open_services().db, job_id)
    except store.JobNotFound as exc:
        fail(str(exc))


def worker(
    once: bool = typer.Option(False, "--once", help="Run at most one job, then exit."),
    poll: float = typer.Option(1.0, "--poll", help="Seconds between looks at the queue."),
    job_id: str | None = typer.Option(None, "--job", help="Run this job only."),
    executor: str | None = typer.Option(
        None,
        "--executor",
        help="Where training runs: local (processes on this machine) or ray (a Ray Train run "
        "on a Ray cluster). Default: TUNELAB_EXECUTOR, else local.",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="The Ray cluster of --executor ray (HOST:PORT of `ray start --head`). Default: "
        "TUNELAB_RAY_ADDRESS, else RAY_ADDRESS, else the cluster on this machine.",
    ),
) -> None:
    """Run queued tuning jobs. SIGTERM: checkpoint, requeue the job, exit."""
    from tunelab.config import get_settings
    from tunelab.jobs.worker import Worker
    from tunelab.services import open_services

    settings = get_settings()
    executor = executor or settings.executor
    if executor not in ("local", "ray"):
        fail(f"--executor (or TUNELAB_EXECUTOR) must be local or ray, not {executor!r}")
    if executor != "ray" and ray_address:
        fail("--ray-address needs --executor ray")
    services = open_services()
    if job_id:
        run_in_process(services, job_id)
        return
    run_recipe = None
    if executor == "ray":
        from tunelab.jobs.ray_executor import RayExecutor, RayUnavailable

        ray = RayExecutor(ray_address or settings.ray_address)
        try:
            ray.connect()  # at start: a wrong address fails here, not in a job
        except RayUnavailable as exc:
            fail(str(exc))
        run_recipe = ray.run_recipe
    w = Worker(services.db, services.artifacts, run_recipe=run_recipe)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.shutdown.set())
    Console(stderr=True).print(f"worker {w.id} ({executor} training) polling {services.db.url}")
    w.run_forever(poll_seconds=poll, max_jobs=1 if once else None)

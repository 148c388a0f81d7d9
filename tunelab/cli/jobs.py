"""``tunelab jobs ...`` and ``tunelab worker``: the tuning-job queue from the command line."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.tune import config_errors, fail, run_in_process, show_error

app = typer.Typer(help="Submit, watch and control tuning jobs.", no_args_is_help=True)
out = Console()


@app.command("submit")
def submit(
    train: Path = typer.Option(..., "--train", exists=True, dir_okay=False),
    name: str = typer.Option(..., "--name", help="Tuned model name."),
    validation: Path | None = typer.Option(None, "--validation", exists=True, dir_okay=False),
    method: str = typer.Option("sft", "--method", help="Tuning method."),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help="JSON file with the method's parameters.",
    ),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key", max=128),
) -> None:
    """Queue a job for `tunelab worker`; prints its id."""
    from pydantic import ValidationError

    from tunelab.cli.tune import submit as submit_from_cli
    from tunelab.jobs.methods import UnknownMethod, method_spec
    from tunelab.services import open_services

    try:
        params = json.loads(config_file.read_text()) if config_file else {}
    except ValueError as exc:
        fail(f"--config {config_file}: not JSON ({exc})")
    if not isinstance(params, dict):
        fail(f"--config {config_file}: expected a JSON object of the method's parameters")
    try:
        config = method_spec(method).config(**params)
    except UnknownMethod as exc:
        fail(f"--method: {exc}")
    except ValidationError as exc:
        fail(config_errors(exc))
    job, _ = submit_from_cli(
        open_services(),
        config,
        name,
        {"train": train, "validation": validation},
        idempotency_key=idempotency_key,
    )
    print(job.id)


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

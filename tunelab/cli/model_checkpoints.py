"""``tunelab models checkpoints NAME`` and ``tunelab models promote NAME --step N``: a tuned
model's kept checkpoints, with their metrics and in-job evaluation, and promoting one to a
version (tunelab.registry.checkpoints)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.tune import fail

out = Console()


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def checkpoints(
    name: str,
    version: int | None = typer.Option(None, "--version", help="Default: the latest."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The kept checkpoints of the job that made a version: step, epoch, train and validation
    loss and accuracy, the in-job evaluation's headline metric, and how to serve each."""
    from tunelab.registry.checkpoints import listing, source_job
    from tunelab.registry.models import ModelNotRegistered, get_version
    from tunelab.services import open_services

    db = open_services().db
    try:
        v = get_version(db, name, version)
    except ModelNotRegistered as exc:
        fail(str(exc))
    job_id = source_job(v)
    found = listing(db, job_id)["checkpoints"] if job_id else []
    if as_json:
        print(json.dumps({"name": name, "version": v.version, "checkpoints": found}, indent=2))
        return
    if not found:
        out.print(f"{name}@{v.version} has no kept checkpoints (its job kept none).")
        return
    headline = next((c["headline_metric"] for c in found if c["headline_metric"]), None)
    table = Table(
        "step",
        "epoch",
        "train loss",
        "train acc",
        "valid loss",
        "valid acc",
        *([f"eval {headline}"] if headline else []),
        "serve as",
        "",
        title=f"{name}@{v.version}: checkpoints of job {job_id}",
    )
    for c in found:
        m = c["metrics"]
        notes = ["final"] if c["is_final"] else []
        notes += [f"promoted to {ref}" for ref in c["promoted_to"]]
        table.add_row(
            str(c["step"]),
            f"{c['epoch']:.2f}",
            _number(m.get("train_loss")),
            _number(m.get("train_accuracy")),
            _number(m.get("eval_loss")),
            _number(m.get("eval_accuracy")),
            *(
                [_number(((c["evaluation"] or {}).get(headline) or {}).get("value"))]
                if headline
                else []
            ),
            c["model"] or "promote it first",
            ", ".join(notes),
        )
    out.print(table)


def promote(
    name: str,
    step: int = typer.Option(..., "--step", help="The kept checkpoint's step."),
    version: int | None = typer.Option(None, "--version", help="Whose job's checkpoint."),
) -> None:
    """Register a kept checkpoint as the next version of the model (lineage: the job and the
    version it was a checkpoint of)."""
    from tunelab.registry.checkpoints import CheckpointNotFound
    from tunelab.registry.checkpoints import promote as promote_checkpoint
    from tunelab.registry.models import ModelNotRegistered, get_version
    from tunelab.services import open_services

    services = open_services()
    db = services.db
    try:
        made = promote_checkpoint(db, get_version(db, name, version), step, services.artifacts)
    except (ModelNotRegistered, CheckpointNotFound) as exc:
        fail(str(exc))
    out.print(f"checkpoint {step} of {name} is now [bold]{made.model_name}@{made.version}[/]")

"""``tunelab data ...``: dataset commands.

``tunelab data validate train.jsonl`` runs the same validation a tuning job runs before training
(:func:`tunelab.data.validation.validate_file`), with the base model's tokenizer, and presents
it: every error with its file, line and field, then the token statistics, then the warnings.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from tunelab.config import DEFAULT_BASE_MODEL
from tunelab.data.validation import DEFAULT_MAX_SEQ_LENGTH, ValidationReport, validate_file

app = typer.Typer(help="Validate and inspect datasets.", no_args_is_help=True)

_PROGRESS_FROM_BYTES = 4 << 20
"""Smaller files validate in about a second; a progress bar would only flicker."""


@app.command()
def validate(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="Supervised-tuning JSONL file."
    ),
    base: str = typer.Option(
        DEFAULT_BASE_MODEL, "--base", help="Base model whose tokenizer and template count tokens."
    ),
    max_seq_length: int = typer.Option(
        DEFAULT_MAX_SEQ_LENGTH, "--max-seq-length", min=1, help="Tokens per training example."
    ),
    epochs: int = typer.Option(1, "--epochs", min=1, help="Epochs, for the billable tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every line of a dataset and count its tokens. Exit code 1 if there are errors."""
    # Imported here, not at the top: it pulls in torch, and every other command (`tunelab jobs
    # list`, `--help`) should answer without paying for that.
    from tunelab.models import ModelNotFoundError, load_tokenizer, resolve_model

    out = Console(highlight=False)
    try:
        tokenizer = load_tokenizer(resolve_model(base).path)
    except ModelNotFoundError as exc:
        Console(stderr=True).print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(2) from None

    size = file.stat().st_size
    columns = (TextColumn("validating"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(
        *columns,
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=size < _PROGRESS_FROM_BYTES,
    ) as progress:
        task = progress.add_task("validate", total=size)
        report = validate_file(
            file,
            tokenizer,
            max_seq_length=max_seq_length,
            epochs=epochs,
            progress=lambda done: progress.update(task, completed=done),
        )

    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _show(out, report)
    if not report.ok:
        raise typer.Exit(1)


def _show(out: Console, report: ValidationReport) -> None:
    for error in report.errors:
        out.print(str(error), style="red", markup=False, soft_wrap=True)
    if report.error_count > len(report.errors):
        out.print(f"... and {report.error_count - len(report.errors)} more errors", style="red")
    out.print(_statistics(report))
    for warning in report.warnings:
        out.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    if report.ok:
        out.print(f"OK: {report.usable_examples} examples ready to train", style="green")
    else:
        plural = "s" if report.error_count != 1 else ""
        out.print(f"{report.error_count} error{plural}: not usable for tuning", style="bold red")


def _statistics(report: ValidationReport) -> Table:
    table = Table(title=Text(report.path), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    formats = ", ".join(f"{name}: {count}" for name, count in sorted(report.formats.items()))
    rows = [
        ("sha256", report.sha256),
        ("examples", f"{report.examples} ({report.usable_examples} usable)"),
        ("formats", formats or "-"),
    ]
    if report.tokenizer is not None:
        mean = f"{report.mean_tokens:.1f}" if report.mean_tokens is not None else "-"
        dropped = "; ".join(f"{n} ({reason})" for reason, n in report.dropped.items()) or "0"
        rows += [
            (
                "total tokens",
                f"{report.total_tokens} (after truncation to {report.max_seq_length})",
            ),
            ("trained tokens", f"{report.trained_tokens} (model turns)"),
            ("billable tokens", f"{report.billable_tokens} (total x {report.epochs} epochs)"),
            (
                "tokens per example",
                f"min {report.min_tokens or 0} / mean {mean} / max {report.max_tokens or 0} "
                "(before truncation)",
            ),
            ("truncated", str(report.truncated)),
            ("dropped", dropped),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table

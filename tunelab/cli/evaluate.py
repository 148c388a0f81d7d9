"""``tunelab eval``: evaluate models on a dataset, side by side, with bootstrap intervals.

    tunelab eval --model smollm2-135m-instruct --model ticket-router \
        --dataset examples/ticket-routing/test.jsonl

Presents :func:`tunelab.evaluation.runner.evaluate_models`: a progress bar per model, the task
(inferred unless given) and why, a table of metrics with intervals and each model's difference
from the first, per-class F1 for classification, the examples where the models disagree most,
and where the report and plots were saved (:func:`tunelab.evaluation.report.save_report`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

err = Console(stderr=True)

TASK_NAMES = ("classification", "summarization", "qa", "generation")


def evaluate_cmd(
    model: list[str] = typer.Option(
        ...,
        "--model",
        help="Tuned model name, adapter folder or base model; repeat to compare (first = baseline).",
    ),
    dataset: Path = typer.Option(
        ..., "--dataset", exists=True, dir_okay=False, readable=True, help="Evaluation JSONL."
    ),
    task: str | None = typer.Option(
        None, "--task", help=f"{', '.join(TASK_NAMES)}; inferred from the data when not given."
    ),
    max_examples: int = typer.Option(
        500, "--max-examples", min=1, help="Sample larger sets to this size (fixed seed)."
    ),
    all_examples: bool = typer.Option(False, "--all", help="Evaluate every example, no sampling."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts generated together."),
    temperature: float = typer.Option(0.0, help="0 means greedy (the default for evaluation)."),
    top_p: float = typer.Option(0.8, "--top-p"),
    top_k: int = typer.Option(40, "--top-k"),
    max_output_tokens: int | None = typer.Option(
        None, "--max-output-tokens", help="Default: twice the longest reference, plus 16."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the sampled set, the bootstrap, and sampled decoding."
    ),
    max_seq_length: int = typer.Option(1024, "--max-seq-length", min=1),
    output: Path | None = typer.Option(
        None,
        "--output",
        file_okay=False,
        help="Folder for the report (default: under TUNELAB_HOME).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print report.json to stdout."),
    accelerator: str = typer.Option(
        "auto",
        "--accelerator",
        help="Where the models compute: auto (CUDA where available), cpu or cuda.",
    ),
    devices: str | None = typer.Option(
        None, "--devices", help="CUDA device to evaluate on, as an index with a comma (1,)."
    ),
) -> None:
    """Evaluate one or more models on the same examples: metrics, intervals, differences."""
    from pydantic import ValidationError

    from tunelab.bundle import BundleIntegrityError, NotABundleError
    from tunelab.cli.serve import resolve_cli_device
    from tunelab.data.validation import DatasetValidationError
    from tunelab.evaluation.report import default_report_dir, save_report
    from tunelab.evaluation.runner import evaluate_models
    from tunelab.models import ModelNotFoundError
    from tunelab.models.catalog import UnsafeModelError
    from tunelab.registry.resolve import ModelNotFound
    from tunelab.serving.generation import GenerationParams

    device = resolve_cli_device(accelerator, devices)
    if task is not None and task not in TASK_NAMES:
        _fail(f"--task must be one of {', '.join(TASK_NAMES)}, not {task!r}")
    if len(set(model)) != len(model):
        _fail("each --model must be different")
    values = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    if temperature > 0:
        values["seed"] = seed
    if max_output_tokens is not None:
        values["max_output_tokens"] = max_output_tokens
    try:
        params = GenerationParams(**values)
    except ValidationError as exc:
        _fail("; ".join(f"--{e['loc'][0]}: {e['msg']}".replace("_", "-") for e in exc.errors()))

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )
    tasks = {ref: bar.add_task(f"{ref}: waiting", total=None, start=False) for ref in model}

    def on_progress(p) -> None:
        if p.phase == "loading":
            bar.start_task(tasks[p.model])  # elapsed time and ETA per model
        # One bar per model covers generation then the reference loss: 2 units per example.
        done = p.done if p.phase != "scoring" else p.total + p.done
        bar.update(
            tasks[p.model], description=f"{p.model}: {p.phase}", completed=done, total=2 * p.total
        )

    try:
        with bar:
            report = evaluate_models(
                model,
                dataset,
                task=task,  # type: ignore[arg-type]
                params=params,
                max_examples=None if all_examples else max_examples,
                batch_size=batch_size,
                max_seq_length=max_seq_length,
                seed=seed,
                progress=on_progress,
                device=device,
            )
    except (
        DatasetValidationError,
        ModelNotFoundError,
        ModelNotFound,
        NotABundleError,
        BundleIntegrityError,
        UnsafeModelError,
    ) as exc:
        _fail(str(exc))

    folder = output or default_report_dir(report)
    written = save_report(report, folder)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return
    out = Console(highlight=False)
    _show(out, report)
    out.print(f"\nsaved: {', '.join(str(p) for p in written)}", soft_wrap=True)


def _show(out: Console, report) -> None:
    from tunelab.evaluation.metrics import METRICS

    how = f"inferred: {report.task_reason}" if report.task_inferred else "given"
    out.print(Text.assemble("task: ", (report.task, "bold"), f" ({how})"), soft_wrap=True)
    scope = f"{report.n_examples} examples"
    if report.sampled:
        scope += f" sampled from {report.n_available} (seed {report.seed}; --all for every one)"
    params = report.params
    decoding = "greedy" if params["temperature"] == 0 else f"temperature {params['temperature']}"
    out.print(f"{scope}; {decoding}, max {params['max_output_tokens']} output tokens")
    for warning in report.warnings:
        out.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)

    pct = f"{report.confidence:.0%}"
    table = Table(title=f"metrics [{pct} paired-bootstrap intervals]", title_justify="left")
    table.add_column("metric", style="bold")
    for m in report.models:
        table.add_column(m.ref, overflow="fold")
    others = report.models[1:]
    for m in others:
        table.add_column(f"{m.ref} - {report.baseline}", overflow="fold")
    for name in report.metrics:
        info = METRICS[name]
        title = info.title + (" *" if name == report.headline else "")
        row = [title] + [_interval(m.metrics[name]) for m in report.models]
        for m in others:
            d = report.differences[m.ref][name]
            style = ""
            if d.excludes_zero:
                better = (d.value > 0) == info.higher_is_better
                style = "green" if better else "red"
            row.append(Text(_interval(d, signed=True), style=style))
        table.add_row(*row)
    out.print(table)
    note = f"* headline metric for {report.task}"
    if others:
        note += "; a difference in colour has an interval excluding 0 (green: better)"
    out.print(note, style="dim")

    if report.labels:
        per_class = Table(title="per-class F1", title_justify="left")
        per_class.add_column("label", style="bold")
        per_class.add_column("support", justify="right")
        for m in report.models:
            per_class.add_column(m.ref, justify="right", overflow="fold")
        first = report.models[0].per_class or {}
        for label in report.labels:
            support = str(first.get(label, {}).get("support", ""))
            per_class.add_row(
                label, support, *(f"{(m.per_class or {})[label]['f1']:.3f}" for m in report.models)
            )
        unknown = ", ".join(f"{m.ref}: {m.unknown_predictions}" for m in report.models)
        per_class.caption = f"responses matching no label: {unknown}"
        out.print(per_class)

    if report.disagreements:
        out.print(
            f"\n[bold]where the models disagree most[/] (per-example {report.example_metric}):"
        )
        for d in report.disagreements[:5]:
            out.print(f"line {d.line}: {_clip(d.prompt)}", markup=False, soft_wrap=True)
            out.print(f"  reference: {_clip(d.reference)}", markup=False, soft_wrap=True)
            for ref, text in d.outputs.items():
                out.print(
                    f"  {ref} ({d.scores[ref]:.2f}): {_clip(text) or '(empty)'}",
                    markup=False,
                    soft_wrap=True,
                )


def _interval(i, signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if abs(i.value) >= 1000:
        fmt = "{:+.3g}" if signed else "{:.3g}"
    return f"{fmt.format(i.value)} [{fmt.format(i.low)}, {fmt.format(i.high)}]"


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str) -> NoReturn:
    err.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)
    raise typer.Exit(1)

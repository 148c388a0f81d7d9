"""Saving an evaluation: the report as JSON, every prediction, and plots.

    report.json         EvalReport.to_dict(): task, metrics with intervals, differences, ...
    predictions.jsonl   one line per example: prompt, reference, each model's response and score
    metrics.png         grouped bars, one group per metric, one bar per model, interval whiskers
    per_class_f1.png    classification only: F1 per label per model

Every file is written atomically, ``report.json`` last: a folder with a ``report.json`` holds a
complete evaluation. Until the registry stores evaluations next to model versions, the CLI
saves them under ``TUNELAB_HOME/evaluations/<id>`` (:func:`default_report_dir`), ``<id>`` made
from what defines the evaluation, so running the same evaluation again replaces it.
"""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from pathlib import Path

from tunelab.config import get_settings
from tunelab.evaluation.metrics import METRICS
from tunelab.evaluation.runner import EvalReport
from tunelab.training.atomic import write_bytes, write_json

REPORT = "report.json"
PREDICTIONS = "predictions.jsonl"
METRICS_PLOT = "metrics.png"
PER_CLASS_PLOT = "per_class_f1.png"


def evaluation_id(report: EvalReport) -> str:
    key = {
        "models": [(m.ref, m.kind, m.path) for m in report.models],
        "dataset": report.dataset_sha256,
        "task": report.task,
        "n": report.n_examples,
        "seed": report.seed,
        "params": report.params,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return "eval-" + digest[:16]


def default_report_dir(report: EvalReport) -> Path:
    return get_settings().home / "evaluations" / evaluation_id(report)


def save_report(report: EvalReport, folder: Path) -> list[Path]:
    """Write the report's files into ``folder`` (created if needed); return their paths."""
    folder = Path(folder)
    (folder / REPORT).unlink(missing_ok=True)  # until rewritten, the folder is incomplete
    (folder / PER_CLASS_PLOT).unlink(missing_ok=True)  # stale if the task changed
    written = []
    lines = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in report.examples)
    write_bytes(folder / PREDICTIONS, lines.encode())
    written.append(folder / PREDICTIONS)
    write_bytes(folder / METRICS_PLOT, plot_metrics(report))
    written.append(folder / METRICS_PLOT)
    if report.labels:
        write_bytes(folder / PER_CLASS_PLOT, plot_per_class_f1(report))
        written.append(folder / PER_CLASS_PLOT)
    write_json(folder / REPORT, report.to_dict())
    written.append(folder / REPORT)
    return written


def plot_metrics(report: EvalReport) -> bytes:
    """PNG: the [0, 1] metrics as grouped bars with interval whiskers; loss in a second panel."""
    plt = _pyplot()
    bounded = [m for m in report.metrics if METRICS[m].bounded]
    panels = [(bounded, "score (higher is better)")]
    if "loss" in report.metrics:
        panels.append((["loss"], "loss on references (lower is better)"))
    n_models = max(1, len(report.models))
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(2.5 + (len(bounded) + 1) * (0.5 + 0.35 * n_models), 4.5),
        dpi=110,
        gridspec_kw={"width_ratios": [max(1, len(names)) for names, _ in panels]},
        squeeze=False,
    )
    for ax, (names, ylabel) in zip(axes[0], panels, strict=True):
        _grouped_bars(
            ax,
            [METRICS[n].title for n in names],
            [[m.metrics[n] for n in names] for m in report.models],
            [m.ref for m in report.models],
        )
        ax.set_ylabel(ylabel, fontsize=9)
        if names is bounded:
            ax.set_ylim(0, 1.05)
    fig.suptitle(
        f"{report.task} on {Path(report.dataset).name} ({report.n_examples} examples, "
        f"{report.confidence:.0%} bootstrap intervals)",
        fontsize=10,
    )
    return _png(fig, plt, axes[0][0])


def plot_per_class_f1(report: EvalReport) -> bytes:
    """PNG: F1 of each label, one bar per model."""
    plt = _pyplot()
    labels = report.labels or []
    n_models = max(1, len(report.models))
    fig, ax = plt.subplots(figsize=(2.5 + len(labels) * (0.4 + 0.3 * n_models), 4.5), dpi=110)
    values = [[(m.per_class or {})[label]["f1"] for label in labels] for m in report.models]
    _grouped_bars(ax, labels, values, [m.ref for m in report.models])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title(f"per-class F1 on {Path(report.dataset).name}", fontsize=10)
    return _png(fig, plt, ax)


def _grouped_bars(ax, groups: list[str], per_model: list[list], names: list[str]) -> None:
    """Bars at group g, model m; ``per_model[m][g]`` is an Interval (whiskers) or a float."""
    width = 0.8 / max(1, len(per_model))
    for m, (values, name) in enumerate(zip(per_model, names, strict=True)):
        xs = [g + (m - (len(per_model) - 1) / 2) * width for g in range(len(groups))]
        heights = [getattr(v, "value", v) for v in values]
        err = None
        if values and hasattr(values[0], "low"):
            err = [
                [max(0.0, v.value - v.low) for v in values],
                [max(0.0, v.high - v.value) for v in values],
            ]
        ax.bar(xs, heights, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.grid(axis="y", alpha=0.3)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    return plt


def _png(fig, plt, legend_ax) -> bytes:
    """Render with one legend for the models below the plots."""
    handles, names = legend_ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(3, len(names)), fontsize=8)
    rows = -(-len(names) // 3)
    fig.tight_layout(rect=(0, 0.04 + 0.05 * rows, 1, 1))
    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

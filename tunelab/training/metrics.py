"""The per-step metrics log (JSON lines) and the loss-curve image drawn from it."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from tunelab.training.atomic import write_bytes

logger = logging.getLogger(__name__)

_plotting_import: threading.Thread | None = None


class MetricsLog:
    """Append-only ``metrics.jsonl``: one object per training step or evaluation.

    On resume the rows past the checkpoint are cut, so the log reads as one uninterrupted run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a row torn by a crash mid-write
                continue
        return out

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.rows() if r.get("step", 0) <= step]
        write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def import_plotting_in_background() -> None:
    """Start importing matplotlib (about 0.6 CPU-s) in a background thread, once per process,
    so that the curve drawn at the end of a run does not wait for it.

    A run calls this when its steps begin: they leave a core idle much of the time (all of it
    when torch computes on one thread of two cores; between kernels otherwise), so the import
    costs the run little wall time there, where at the end it would add all of it.
    Drawing still imports matplotlib itself; Python's import lock makes it wait for this import
    if it has not finished, and if it failed the drawing's own import reports why.
    """
    global _plotting_import
    if _plotting_import is None and "matplotlib.pyplot" not in sys.modules:
        _plotting_import = threading.Thread(
            target=_import_plotting, name="tunelab-import-matplotlib", daemon=True
        )
        _plotting_import.start()


def _import_plotting() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers
        import matplotlib.pyplot  # noqa: F401
    except Exception:  # noqa: BLE001 - the drawing imports it again and reports the error
        logger.debug("importing matplotlib in the background failed", exc_info=True)


def plot_loss_curve(
    rows: list[dict[str, Any]],
    path: Path,
    title: str,
    loss_label: str = "cross-entropy on model turns",
) -> None:
    """Train loss (raw and smoothed) and eval loss against step, as a PNG; ``loss_label`` names
    the method's loss on the y axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="#9ecae1", linewidth=1, label="train loss")
        ax.plot(steps, _ema(losses), color="#3182bd", linewidth=2, label="train loss (smoothed)")
    if evals:
        steps, losses = zip(*evals, strict=True)
        ax.plot(steps, losses, "o-", color="#e6550d", linewidth=2, label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel(loss_label)
    save_figure(fig, ax, path, title)


def save_figure(fig, ax, path: Path, title: str, legend_loc: str = "best") -> None:
    """Finish a training plot the one way every recipe draws it (title, grid, legend) and write
    it to ``path`` as a PNG, atomically; the figure is closed (pyplot keeps every open one)."""
    from io import BytesIO

    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc)
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _ema(values, beta: float = 0.8) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard smooths), so the curve
    does not lag at the start of a short run."""
    out, avg = [], 0.0
    for n, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**n))
    return out

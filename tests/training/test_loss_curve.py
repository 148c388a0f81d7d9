"""The loss curve names the method's own loss: a reward model's is not SFT's cross-entropy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.training import metrics

ROWS = [{"step": 1, "train_loss": 0.7}, {"step": 2, "train_loss": 0.5, "eval_loss": 0.6}]


@pytest.fixture
def labels(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = metrics.save_figure

    def keep_label(fig, ax, path, title, **kw):
        seen.append(ax.get_ylabel())
        real(fig, ax, path, title, **kw)

    monkeypatch.setattr(metrics, "save_figure", keep_label)
    return seen


def test_default_label_is_sft_cross_entropy(tmp_path: Path, labels: list[str]) -> None:
    metrics.plot_loss_curve(ROWS, tmp_path / "curve.png", "SFT")
    assert labels == ["cross-entropy on model turns"]
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_method_names_its_loss(tmp_path: Path, labels: list[str]) -> None:
    metrics.plot_loss_curve(ROWS, tmp_path / "curve.png", "RM", loss_label="pairwise loss")
    assert labels == ["pairwise loss"]


def test_matplotlib_is_imported_in_the_background_once(tmp_path: Path) -> None:
    """A run's steps start the import (tunelab.training.run.TrainingRun.steps) so the curve at
    its end does not wait for it: one thread per process, which leaves pyplot loaded with the
    non-interactive backend; drawing after it works as before."""
    import subprocess
    import sys

    script = f"""
import sys
from tunelab.training import metrics
assert "matplotlib" not in sys.modules
metrics.import_plotting_in_background()
first = metrics._plotting_import
metrics.import_plotting_in_background()
assert metrics._plotting_import is first and first.name == "tunelab-import-matplotlib"
first.join(60)
import matplotlib
assert "matplotlib.pyplot" in sys.modules and matplotlib.get_backend().lower() == "agg"
metrics.plot_loss_curve({ROWS!r}, __import__("pathlib").Path({str(tmp_path)!r}) / "c.png", "t")
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

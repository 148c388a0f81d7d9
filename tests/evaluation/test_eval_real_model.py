"""On the real default model, the example task's tuned model is ahead of the base on the task's
metric, with a paired-bootstrap interval of the difference that excludes zero. Minutes on CPU:
marked slow (CI runs it)."""

from pathlib import Path

import pytest

from tunelab.evaluation.report import save_report
from tunelab.evaluation.runner import evaluate_models

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ticket-routing"


@pytest.mark.slow
def test_tuned_model_is_ahead_of_the_base_with_the_interval_excluding_zero(ticket_router, tmp_path):
    config, result = ticket_router  # tune sft on the example data (tests/conftest.py)
    tuned = str(result.adapter_dir)
    report = evaluate_models([config.base_model, tuned], EXAMPLES / "test.jsonl")

    assert report.task == "classification" and report.task_inferred
    assert report.labels == ["account", "billing", "shipping", "technical"]
    for metric in ("macro_f1", "exact_match", "loss"):
        diff = report.differences[tuned][metric]
        base, ours = (m.metrics[metric].value for m in report.models)
        print(f"{metric}: base {base:.3f}, tuned {ours:.3f}, diff {diff}")
        assert diff.excludes_zero
        assert (diff.value < 0) if metric == "loss" else (diff.value > 0)
    assert report.models[1].metrics["macro_f1"].value >= 0.7
    files = {p.name for p in save_report(report, tmp_path / "eval")}
    assert {"report.json", "metrics.png", "per_class_f1.png", "predictions.jsonl"} == files

"""A job with a validation set evaluates the tuned model against its base after training, as
Vertex does, and stores the results with the model version and as an artifact."""

from pathlib import Path

from support import color_rows, write_jsonl

from tunelab.configs import SFTConfig
from tunelab.jobs import store
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.registry.models import get_version


def test_job_with_validation_set_stores_evaluation(services, tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", color_rows(32))
    val = write_jsonl(tmp_path / "val.jsonl", color_rows(12, offset=500))
    cfg = SFTConfig(
        base_model=str(tiny_model_dir),
        train_steps=8,
        eval_every_steps=4,
        learning_rate_multiplier=10,
    )
    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=cfg,
        name="evaluated",
        datasets={"train": train, "validation": val},
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"

    evaluation = get_version(services.db, "evaluated").evaluation
    assert evaluation["task"] == "classification" and evaluation["n_examples"] == 12
    assert [m["ref"] for m in evaluation["models"]] == ["base", "tuned"]
    for model in evaluation["models"]:
        assert {"exact_match", "macro_f1", "loss"} <= set(model["metrics"])
    diff = evaluation["differences"]["tuned"]["loss"]
    assert diff["low"] <= diff["value"] <= diff["high"]
    report = Path(evaluation["report"]["uri"])
    assert {"report.json", "metrics.png", "predictions.jsonl"} <= {p.name for p in report.iterdir()}
    step = {s.name: s for s in store.steps_of(services.db, job.id)}["evaluate"]
    assert step.state == "SUCCEEDED" and step.outputs["report"]["sha256"]

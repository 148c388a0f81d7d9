"""DPO as a job: through the generic ``train``/``validation`` roles (what ``jobs submit`` and the
REST API send), starting from a registered supervised model whose version enters the lineage."""

import pytest
from support import preference_rows, write_jsonl

from tunelab.configs import SFTConfig
from tunelab.configs.dpo import DPOConfig
from tunelab.jobs import store
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.registry.models import get_version, upstream


@pytest.fixture
def db_url(tmp_path):
    """SQLite only: the store's PostgreSQL behaviour is covered by the store tests."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


def run(services, config, name, datasets):
    job, _ = submit_job(
        services.db, services.artifacts, config=config, name=name, datasets=datasets
    )
    outcome = Worker(services.db, services.artifacts).run_job(job.id)
    return store.get_job(services.db, job.id), outcome.state


def test_dpo_job_from_a_registered_sft_model(services, tmp_path, tiny_model_dir):
    sft_rows = [{"input_text": f"Question {i}?", "output_text": f"It is {i}."} for i in range(16)]
    _, state = run(
        services,
        SFTConfig(base_model=str(tiny_model_dir), train_steps=3),
        "support-sft",
        {"train": write_jsonl(tmp_path / "sft.jsonl", sft_rows)},
    )
    assert state == "SUCCEEDED"
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(24))
    heldout = write_jsonl(tmp_path / "heldout.jsonl", preference_rows(8, offset=100))
    config = DPOConfig(
        base_model=str(tiny_model_dir),
        init_adapter="support-sft",
        train_steps=4,
        batch_size=4,
        eval_every_steps=2,
        target_sequence_length=24,
    )
    job, state = run(services, config, "support-dpo", {"train": pairs, "validation": heldout})
    assert state == "SUCCEEDED"
    steps = {s.name: s for s in store.steps_of(services.db, job.id)}
    assert [s.state for s in steps.values()] == ["SUCCEEDED"] * 6
    sft_version = get_version(services.db, "support-sft")
    assert steps["prepare"].outputs["init_adapter_version_id"] == sft_version.id
    assert {"eval_logp_margin", "eval_reference_logp_margin", "eval_reward_accuracy"} <= (
        steps["evaluate"].outputs.keys()
    )
    version = get_version(services.db, "support-dpo")
    assert version.method == "dpo" and version.metrics["evaluation"]["eval_loss"] > 0
    edges = {
        (e.src_kind, e.src_id, e.relation)
        for e in upstream(services.db, "model_version", version.id)
    }
    assert ("model_version", sft_version.id, "init_adapter") in edges
    assert ("dataset", job.datasets["train"], "preference") in edges
    assert ("dataset", job.datasets["validation"], "validation") in edges
    assert job.endpoint and job.usage["trained_tokens"] > 0
    # Evaluated inside the job, per kept checkpoint (every evaluation, 2 and 4), with tunelab
    # eval's metrics against the preferred answers, next to each step's DPO figures.
    from tunelab.registry.checkpoints import job_checkpoints

    kept = job_checkpoints(services.db, job.id)
    assert [c.step for c in kept] == [2, 4]
    assert all({"loss", "rouge_l"} <= c.evaluation.keys() for c in kept)
    assert all("eval_reward_accuracy" in c.metrics for c in kept)
    assert kept[0].evaluation["loss"] != kept[1].evaluation["loss"]
    assert [m["ref"] for m in version.evaluation["models"]] == ["base", "tuned"]
    assert [r["step"] for r in store.metrics_of(services.db, job.id) if "train_loss" in r] == [
        1,
        2,
        3,
        4,
    ]


def test_unknown_init_adapter_fails_permanently(services, tmp_path, tiny_model_dir):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    config = DPOConfig(base_model=str(tiny_model_dir), init_adapter="no-such-model", train_steps=1)
    job, state = run(services, config, "orphan", {"preference": pairs})
    assert state == "FAILED" and job.error["code"] == "init_adapter_not_found"
    assert job.attempts == 1  # permanent: not retried

"""RFT as a job through the worker on a tiny model: every pipeline step, the tuned model
registered with lineage and the evaluation on it, a score_model grader found in the registry
(and refused when it names no reward model), and a python grader the operator did not allow
failing the job at validation."""

import pytest
from support import preference_rows, write_jsonl

from tunelab.configs.rft import RFTConfig
from tunelab.configs.rlhf import RewardModelConfig
from tunelab.jobs import store
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.registry.models import get_version, upstream

STEPS = ["validate", "prepare", "train", "evaluate", "register", "deploy"]


@pytest.fixture
def db_url(tmp_path):
    """SQLite only: the store's PostgreSQL behaviour is covered by the store tests."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


@pytest.fixture
def data(tmp_path):
    rows = [{"input_text": f"Number {i}?", "answer": i, "reference": f"{i}"} for i in range(8)]
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", rows),
        "validation": write_jsonl(tmp_path / "val.jsonl", rows[:4]),
    }


def config(model_dir, grader, **overrides):
    values = dict(
        base_model=str(model_dir),
        grader=grader,
        train_steps=2,
        learning_rate_multiplier=10.0,
        target_sequence_length=4,
        prompts_per_step=2,
        samples_per_prompt=2,
        seed=3,
        grade_cut_answers=True,  # a random tiny model rarely ends within 4 tokens
    )
    return RFTConfig(**(values | overrides))


def run(services, cfg, name, datasets):
    """The job after the worker ran it."""
    job, _ = submit_job(services.db, services.artifacts, config=cfg, name=name, datasets=datasets)
    Worker(services.db, services.artifacts).run_job(job.id)
    return store.get_job(services.db, job.id)


def test_rft_job_registers_the_policy_with_its_evaluation(services, tiny_model_dir, data):
    grader = {
        "type": "weighted_sum",
        "graders": [
            {"type": "numeric", "reference": "{{item.answer}}"},
            {"type": "text_similarity", "metric": "fuzzy_ratio", "reference": "{{item.reference}}"},
        ],
    }
    job = run(services, config(tiny_model_dir, grader), "numbers", data)
    assert job.state == "SUCCEEDED", job.error
    steps = store.steps_of(services.db, job.id)
    assert [(s.name, s.state) for s in steps] == [(n, "SUCCEEDED") for n in STEPS]
    evaluation = {s.name: s.outputs for s in steps}["evaluate"]
    assert evaluation["prompts"] == 4
    assert {"pass_rate_base", "pass_rate_tuned", "mean_reward_difference"} <= evaluation.keys()

    version = get_version(services.db, "numbers")
    assert version.method == "rft" and version.config["grader"]["type"] == "weighted_sum"
    assert version.metrics["evaluation"]["pass_rate_tuned"] == evaluation["pass_rate_tuned"]
    assert version.metrics["grader_failures"] == 0
    edges = {
        (e.src_kind, e.src_id, e.relation)
        for e in upstream(services.db, "model_version", version.id)
    }
    assert ("dataset", job.datasets["train"], "train") in edges
    assert ("dataset", job.datasets["validation"], "validation") in edges
    rows = [r for r in store.metrics_of(services.db, job.id) if "train_loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and "pass_rate" in rows[-1]


def test_score_model_grader_uses_a_registered_reward_model(
    services, tiny_model_dir, data, tmp_path
):
    from tunelab.recipes.reward_model import train_reward_model
    from tunelab.registry.models import register_version

    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(16))
    rm_config = RewardModelConfig(base_model=str(tiny_model_dir), train_steps=2)
    rm = train_reward_model(rm_config, pairs, tmp_path / "rm")
    stored = services.artifacts.put_dir(rm.bundle_dir, "test/rm")
    reward = register_version(
        services.db,
        name="judge",
        method="reward_model",
        base_model=str(tiny_model_dir),
        config=rm_config.model_dump(mode="json"),
        adapter_uri=stored.uri,
        adapter_sha256=stored.sha256,
        adapter_size=stored.size_bytes,
        metrics={},
        inputs=[],
        data_stats={},
        source_job_id=None,
    )
    grader = {"type": "score_model", "model": "judge"}
    job = run(services, config(tiny_model_dir, grader), "judged", {"train": data["train"]})
    assert job.state == "SUCCEEDED", job.error
    version = get_version(services.db, "judged")
    edges = {
        (e.src_kind, e.src_id, e.relation)
        for e in upstream(services.db, "model_version", version.id)
    }
    assert ("model_version", reward.id, "score_model") in edges
    last = version.metrics["last_step"]
    assert 0 < last["reward"] < 1  # sigmoid of the reward model's scores

    # A name that is no reward model fails the job at validation, saying so.
    bad = {"type": "score_model", "model": "judged"}  # an RFT policy, not a reward model
    job = run(services, config(tiny_model_dir, bad), "nope", {"train": data["train"]})
    assert job.state == "FAILED" and "not a reward model" in job.error["message"]


def test_a_python_grader_the_operator_did_not_allow_fails_validation(
    services, tiny_model_dir, data, monkeypatch
):
    monkeypatch.delenv("TUNELAB_PYTHON_GRADERS", raising=False)
    grader = {"type": "python", "source": "mine"}
    job = run(services, config(tiny_model_dir, grader), "py", {"train": data["train"]})
    assert job.state == "FAILED"
    assert (
        job.error["code"] == "invalid_grader" and "TUNELAB_PYTHON_GRADERS" in job.error["message"]
    )
    assert store.steps_of(services.db, job.id)[0].state == "FAILED"

"""RLHF as a job through the worker on a tiny model: every pipeline step, both artifacts in the
registry with lineage preference data -> reward model -> policy, one metrics series, a job
stopped in the RL stage resuming there to the same policy, and bad data failing with line
numbers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import preference_rows, write_jsonl

from tunelab.config import get_settings
from tunelab.configs.rlhf import RLHFConfig
from tunelab.jobs import store
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.registry.models import adapter_artifact, get_version, upstream

STEPS = ["validate", "reward_model", "reinforcement_learning", "evaluate", "register", "deploy"]


@pytest.fixture
def db_url(tmp_path):
    """SQLite only: the store's PostgreSQL behaviour is covered by the store tests."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


@pytest.fixture
def data(tmp_path):
    return {
        "preference": write_jsonl(tmp_path / "pairs.jsonl", preference_rows(32)),
        "prompts": write_jsonl(
            tmp_path / "prompts.jsonl", [{"input_text": f"Q {i}?"} for i in range(8)]
        ),
        "eval": write_jsonl(
            tmp_path / "eval.jsonl", [{"input_text": f"Held {i}?"} for i in range(4)]
        ),
    }


def config(model_dir, **overrides):
    values = dict(
        base_model=str(model_dir),
        reward_model_train_steps=6,
        reward_model_learning_rate_multiplier=10.0,
        reinforcement_learning_train_steps=4,
        reinforcement_learning_rate_multiplier=10.0,
        target_sequence_length=6,
        prompts_per_step=2,
        samples_per_prompt=2,
        checkpoint_every_steps=2,
        seed=4,
    )
    return RLHFConfig(**(values | overrides))


def policy_weights(services, name):
    version = get_version(services.db, name)
    return load_file(Path(adapter_artifact(services.db, version).uri) / "adapter_model.safetensors")


def test_rlhf_job_registers_reward_model_and_policy_with_lineage(services, tiny_model_dir, data):
    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=config(tiny_model_dir),
        name="concise",
        datasets=data,
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"

    steps = store.steps_of(services.db, job.id)
    assert [(s.name, s.state) for s in steps] == [(n, "SUCCEEDED") for n in STEPS]
    outputs = {s.name: s.outputs for s in steps}
    assert 0 <= outputs["reward_model"]["pairwise_accuracy"] <= 1
    assert {"mean_reward_base", "mean_reward_tuned", "win_rate"} <= outputs["evaluate"].keys()

    policy, reward = get_version(services.db, "concise"), get_version(services.db, "concise-reward")
    assert (policy.method, reward.method) == ("rlhf", "reward_model")
    assert policy.source_job_id == job.id and reward.config["method"] == "reward_model"
    edges = {
        (e.src_kind, e.src_id, e.relation)
        for e in upstream(services.db, "model_version", policy.id)
    }
    assert ("model_version", reward.id, "reward_model") in edges
    assert (
        "dataset",
        job.datasets["preference"],
        "preference",
    ) in edges  # through the reward model
    assert ("dataset", job.datasets["prompts"], "prompts") in edges
    assert ("job", job.id, "produced") in edges
    reward_bundle = Path(adapter_artifact(services.db, reward).uri)
    assert (reward_bundle / "reward_head.safetensors").is_file()

    done = store.get_job(services.db, job.id)
    assert done.tuned_model_version == 1 and done.endpoint and done.usage["trained_tokens"] > 0
    rows = store.metrics_of(services.db, job.id)
    trained = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in trained] == list(range(1, 11))  # 6 reward-model + 4 policy steps
    assert [r["stage"] for r in trained] == ["reward_model"] * 6 + ["reinforcement_learning"] * 4
    assert {"reward", "kl", "response_length"} <= trained[-1].keys()

    # The policy's kept checkpoints (every 2 steps: 2 and 4), each judged by the reward model.
    from tunelab.bundle import verify_adapter_bundle
    from tunelab.registry.checkpoints import job_checkpoints, version_checkpoints

    kept = job_checkpoints(services.db, job.id)
    assert [c.step for c in kept] == [2, 4] and [c.is_final for c in kept] == [False, True]
    assert all({"reward", "kl"} <= c.metrics.keys() for c in kept)
    assert all({"mean_reward", "win_rate"} <= c.evaluation.keys() for c in kept)
    final = kept[1].evaluation["mean_reward"]["value"]
    assert final == outputs["evaluate"]["mean_reward_tuned"]
    folder = Path(kept[0].adapter["uri"])
    verify_adapter_bundle(folder)
    assert not any(p.is_dir() for p in folder.iterdir())  # the policy only, not the reward adapter
    assert version_checkpoints(services.db, reward) == []  # the reward model lists none


class StopInPolicyStage(Worker):
    """A worker told to shut down once the policy has taken two steps (as SIGTERM would)."""

    def _should_stop(self):
        logs = list(get_settings().work.glob("*/reinforcement_learning/metrics.jsonl"))
        taken = len(logs[0].read_text().splitlines()) if logs else 0
        return super()._should_stop() or taken >= 2


def test_job_stopped_in_the_rl_stage_resumes_there_to_the_same_policy(
    services, tiny_model_dir, data
):
    straight, _ = submit_job(
        services.db,
        services.artifacts,
        config=config(tiny_model_dir),
        name="straight",
        datasets=data,
    )
    assert Worker(services.db, services.artifacts).run_job(straight.id).state == "SUCCEEDED"

    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=config(tiny_model_dir),
        name="stopped",
        datasets=data,
    )
    assert StopInPolicyStage(services.db, services.artifacts).run_job(job.id).state == "QUEUED"
    states = {s.name: s.state for s in store.steps_of(services.db, job.id)}
    assert states["reward_model"] == "SUCCEEDED" and states["reinforcement_learning"] == "RUNNING"
    first = {s.name: s for s in store.steps_of(services.db, job.id)}["reward_model"]
    checkpoints = get_settings().work / job.id / "reinforcement_learning" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-00000002"]

    assert Worker(services.db, services.artifacts).run_job(job.id).state == "SUCCEEDED"
    again = {s.name: s for s in store.steps_of(services.db, job.id)}["reward_model"]
    assert again.ended_at == first.ended_at  # the reward model was not trained again
    expected, resumed = policy_weights(services, "straight"), policy_weights(services, "stopped")
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)
    policy_rows = [
        r
        for r in store.metrics_of(services.db, job.id)
        if r.get("stage") == "reinforcement_learning"
    ]
    assert [r["stage_step"] for r in policy_rows] == [1, 2, 3, 4]


def test_bad_preference_data_fails_the_job_with_line_numbers(
    services, tiny_model_dir, data, tmp_path
):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in preference_rows(20)]
    lines[4] = json.dumps({**json.loads(lines[4]), "choice": 3})
    lines[9] = "{oops"
    bad.write_text("\n".join(lines) + "\n")
    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=config(tiny_model_dir),
        name="bad",
        datasets={**data, "preference": bad},
    )
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "FAILED"
    error = store.get_job(services.db, job.id).error
    assert error["code"] == "invalid_dataset"
    assert [(e["line"], e["code"]) for e in error["details"]["errors"]] == [
        (5, "invalid_choice"),
        (10, "invalid_json"),
    ]

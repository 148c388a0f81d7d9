"""Continued tuning: ``--base NAME[@VERSION]`` of a tuned model starts the run from that
adapter on its base model (its first loss is the parent's eval loss), the new version's lineage
points at the parent, and DPO chains from a supervised model the same way."""

import json

import pytest
from support import color_rows, preference_rows, write_jsonl

from tunelab.configs import DPOConfig, SFTConfig
from tunelab.jobs import store
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker
from tunelab.registry.continuation import ContinuationError
from tunelab.registry.models import get_version, upstream


def run(services, config, name, **datasets):
    job, _ = submit_job(
        services.db, services.artifacts, config=config, name=name, datasets=datasets
    )
    Worker(services.db, services.artifacts).run_job(job.id)
    done = store.get_job(services.db, job.id)
    assert done.state == "SUCCEEDED", done.error
    return done


@pytest.fixture(scope="module")
def module_db_url(module_db_url_on_each_backend):
    """Continued tuning reads the registry and the jobs store: both backends."""
    return module_db_url_on_each_backend


@pytest.fixture(autouse=True)
def tunelab_home(module_home):
    """The module's home: the parent model below is trained once per backend, not per test."""
    return module_home / "tunelab-home"


@pytest.fixture
def services(module_services):
    return module_services[0]


@pytest.fixture(scope="module")
def parent(module_home, module_services, tiny_model_dir):
    """colors@1: SFT with a validation set; its bundle holds the best-eval adapter. The tests
    only read it (their own runs are new names or new versions, never its default)."""
    services, _ = module_services
    train = write_jsonl(module_home / "train.jsonl", color_rows(48))
    val = write_jsonl(module_home / "val.jsonl", color_rows(16, offset=1000))
    config = SFTConfig(
        base_model=str(tiny_model_dir),
        train_steps=12,
        eval_every_steps=4,
        learning_rate_multiplier=10,
        precision="fp32",
        early_stopping_patience=None,
    )
    run(services, config, "colors", train=train, validation=val)
    return get_version(services.db, "colors@1"), val


def first_loss(services, job) -> float:
    return next(m["train_loss"] for m in store.metrics_of(services.db, job.id) if "train_loss" in m)


def test_sft_from_a_tuned_model_starts_at_its_adapter(services, parent, tiny_model_dir):
    version, val = parent
    best_eval_loss = version.metrics["best_eval_loss"]
    # One step over the parent's validation set as one batch: the loss before the first update
    # is the parent adapter's loss on that set, i.e. its best eval loss.
    step = dict(train_steps=1, batch_size=16, precision="fp32", learning_rate_multiplier=1)
    child = run(services, SFTConfig(base_model="colors@1", **step), "colors", train=val)
    assert child.config["base_model"] == str(tiny_model_dir)
    assert child.config["init_adapter"] == "colors@1"
    assert first_loss(services, child) == pytest.approx(best_eval_loss, abs=2e-4)

    fresh = run(services, SFTConfig(base_model=str(tiny_model_dir), **step), "fresh", train=val)
    assert first_loss(services, fresh) > best_eval_loss + 0.5  # the base alone is far worse

    # (the child had no validation set to compare with colors@1, so `colors`, its default
    # version, is still 1: name the child's version)
    v2 = get_version(services.db, "colors@2")
    assert v2.version == 2 and v2.base_model == str(tiny_model_dir)
    edges = {
        (e.src_kind, e.src_id, e.relation) for e in upstream(services.db, "model_version", v2.id)
    }
    assert ("model_version", version.id, "init_adapter") in edges
    assert ("job", child.id, "produced") in edges
    # transitively, the parent's own job and datasets are part of the chain
    assert ("job", version.source_job_id, "produced") in edges

    from typer.testing import CliRunner

    from tunelab.cli import app

    shown = CliRunner().invoke(app, ["models", "lineage", "colors@2", "--json"])
    assert shown.exit_code == 0, shown.output
    ups = json.loads(shown.output)["upstream"]
    assert {
        "from": f"model_version:{version.id} (colors@1)",
        "to": f"model_version:{v2.id}",
        "relation": "init_adapter",
    } in ups


def test_dpo_chains_from_the_supervised_model(services, parent, tmp_path, tiny_model_dir):
    version, _ = parent
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    config = DPOConfig(base_model="colors", train_steps=2, batch_size=4)
    job = run(services, config, "colors-dpo", preference=pairs)
    assert job.config["init_adapter"] == "colors@1"
    assert job.config["base_model"] == str(tiny_model_dir)
    dpo = get_version(services.db, "colors-dpo")
    edges = {
        (e.src_kind, e.src_id, e.relation) for e in upstream(services.db, "model_version", dpo.id)
    }
    assert ("model_version", version.id, "init_adapter") in edges


def test_bad_continuations_are_refused_at_submit(services, parent, tmp_path):
    val = parent[1]
    jobs_before = len(store.list_jobs(services.db))
    with pytest.raises(ContinuationError, match="give one of them"):
        submit_job(
            services.db,
            services.artifacts,
            config=SFTConfig(base_model="colors", init_adapter="colors@1"),
            name="x",
            datasets={"train": val},
        )
    from tunelab.configs import RLHFConfig

    with pytest.raises(ContinuationError, match="starts from a base model only"):
        submit_job(
            services.db,
            services.artifacts,
            config=RLHFConfig(base_model="colors"),
            name="x",
            datasets={"preference": val, "prompts": val},
        )
    assert len(store.list_jobs(services.db)) == jobs_before  # nothing queued


def test_rest_refuses_an_impossible_chain_with_the_field(services, parent):
    import httpx
    from support import LiveServer

    from tunelab.api.app import create_app
    from tunelab.auth import create_key
    from tunelab.registry.datasets import register_dataset

    dataset = register_dataset(services.db, services.artifacts, parent[1]).id
    key = create_key(services.db, "tests").secret
    with LiveServer(create_app(services)) as server:
        reply = httpx.post(
            f"{server.url}/v1/tuningJobs",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "method": "sft",
                "tuned_model_display_name": "x",
                "train_dataset": dataset,
                "config": {"base_model": "colors", "init_adapter": "colors@1"},
            },
        )
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert "give one of them" in error["message"]
    assert error["details"]["field"] == "config.base_model"

"""``tunelab jobs submit`` queues a job of any method: a dataset option per role of the method
table (generated, like ``tune <method>``'s), each job taking its method's roles only, with a
clear error naming the option for a role the method does not take or a required one missing."""

import json

import pytest
from support import preference_rows, write_jsonl
from typer.main import get_command
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.jobs import store
from tunelab.jobs.methods import METHODS

runner = CliRunner()


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


def _submit(*args):
    return runner.invoke(app, ["jobs", "submit", "--name", "roles", *map(str, args)])


def test_every_role_of_every_method_is_an_option():
    submit = get_command(app).commands["jobs"].commands["submit"]
    flags = {flag for p in submit.params for flag in p.opts}
    for method, spec in METHODS.items():
        for role in (*(r.name for r in spec.dataset_roles), *spec.role_aliases):
            assert "--" + role.replace("_", "-") in flags, (method, role)


def test_a_dpo_and_an_rlhf_job_are_queued_with_their_roles(services, tmp_path, tiny_model_dir):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(4))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"input_text": "Hi?"}])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"base_model": str(tiny_model_dir), "train_steps": 1}))
    done = _submit(
        "--method", "dpo", "--preference", pairs, "--validation", pairs, "--config", config
    )
    assert done.exit_code == 0, done.output
    job = store.get_job(services.db, done.output.strip().splitlines()[-1])
    assert job.method == "dpo" and set(job.datasets) == {"preference", "validation"}

    config.write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    done = _submit(
        "--method",
        "rlhf",
        "--preference",
        pairs,
        "--prompts",
        prompts,
        "--eval",
        prompts,
        "--config",
        config,
    )
    assert done.exit_code == 0, done.output
    job = store.get_job(services.db, done.output.strip().splitlines()[-1])
    assert job.method == "rlhf" and set(job.datasets) == {"preference", "prompts", "eval"}
    assert job.config["base_model"] == str(tiny_model_dir)


def test_an_embedding_job_takes_its_corpus_queries_and_labels(services, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "", "text": "x"}])
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "x?"}])
    labels = tmp_path / "labels.tsv"
    labels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    done = _submit(
        "--method", "embedding", "--corpus", corpus, "--queries", queries, "--train-labels", labels
    )
    assert done.exit_code == 0, done.output
    job = store.get_job(services.db, done.output.strip().splitlines()[-1])
    assert set(job.datasets) == {"corpus", "queries", "train_labels"}


def test_a_role_the_method_does_not_take_or_a_missing_one_is_refused_by_option(services, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(4))
    # Before: --train was required and the only way in, so an RLHF job could not be written.
    done = _submit("--method", "rlhf", "--train", pairs, "--preference", pairs)
    assert done.exit_code == 1
    assert "--train: rlhf jobs take no 'train' dataset" in done.output
    assert "--prompts: rlhf jobs need a 'prompts' dataset" in done.output
    done = _submit("--method", "sft", "--corpus", pairs, "--train", pairs)
    assert done.exit_code == 1 and "--corpus: sft jobs take no 'corpus' dataset" in done.output
    done = _submit("--method", "embedding")
    assert done.exit_code == 1 and "--corpus: embedding jobs need a 'corpus' dataset" in done.output
    assert store.list_jobs(services.db, None, 10) == []  # nothing queued

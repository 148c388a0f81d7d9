"""OpenAI's fine-tuning API, driven by the official ``openai`` client against a real server on
loopback, as a team moving off OpenAI would: upload files, create jobs, poll them, page through
jobs and events, read checkpoints, chat with the tuned model, cancel, pause and resume, and get
bad files refused with their line numbers. Only the fixtures (server, worker, key) touch
TuneLab; the tests speak to it through ``openai`` alone."""

import io
import json
import threading
import time

import pytest
from support import COLOR_LABELS, LiveServer

COLORS = COLOR_LABELS


@pytest.fixture
def server(services, api_key):
    """``tunelab serve``'s app (REST and inference) on loopback; no worker yet."""
    from tunelab.api.app import create_app
    from tunelab.serving.pool import InferencePool

    pool = InferencePool(services)
    with LiveServer(create_app(services, inference=pool)) as live:
        yield live
    pool.close()


@pytest.fixture
def worker(services):
    """A worker thread running queued jobs, as ``tunelab serve`` starts one."""
    from tunelab.jobs.worker import Worker

    w = Worker(services.db, services.artifacts, lease_seconds=30)
    thread = threading.Thread(target=w.run_forever, kwargs={"poll_seconds": 0.1}, daemon=True)
    thread.start()
    yield w
    w.shutdown.set()
    thread.join(60)


@pytest.fixture
def client(server, api_key):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0)


@pytest.fixture
def base(tiny_model_dir):
    return str(tiny_model_dir)


# ------------------------------------------------------------------- data in OpenAI's formats


def chat_rows(n, offset=0):
    return [
        {
            "messages": [
                {"role": "system", "content": "Name the colour."},
                {"role": "user", "content": f"item {i + offset}: the {COLORS[i % 4]} one"},
                {"role": "assistant", "content": COLORS[i % 4]},
            ]
        }
        for i in range(n)
    ]


def dpo_rows(n):
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Question {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"It is {i}."}],
            "non_preferred_output": [
                {"role": "assistant", "content": f"It is {i}. Well, that is a long story."}
            ],
        }
        for i in range(n)
    ]


def jsonl(rows, name="data.jsonl"):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    return (name, io.BytesIO(text.encode()))


def upload(client, rows, name="data.jsonl"):
    return client.files.create(file=jsonl(rows, name), purpose="fine-tune")


def wait_for(client, job_id, statuses, timeout=180):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        if job.status in statuses:
            return job, seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {statuses}; went through {seen}")


# ---------------------------------------------------------------------------------- the cycle


def test_full_supervised_cycle_then_dpo_from_the_result(client, worker, base, tiny_model_dir):
    train = upload(client, chat_rows(16), "train.jsonl")
    valid = upload(client, chat_rows(4, offset=100), "valid.jsonl")
    assert (train.object, train.purpose, train.filename) == ("file", "fine-tune", "train.jsonl")
    assert client.files.retrieve(train.id).bytes == train.bytes
    assert client.files.content(train.id).text.splitlines()[0] == json.dumps(chat_rows(1)[0])
    assert {train.id, valid.id} <= {f.id for f in client.files.list()}

    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=train.id,
        validation_file=valid.id,
        suffix="colors",
        seed=7,
        metadata={"team": "support"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": 4,
                    "learning_rate_multiplier": "auto",
                }
            },
        },
    )
    assert job.object == "fine_tuning.job" and job.status == "queued"
    assert job.fine_tuned_model is None and job.finished_at is None
    assert (job.training_file, job.validation_file, job.seed) == (train.id, valid.id, 7)
    assert job.metadata == {"team": "support"} and job.model == base

    done, seen = wait_for(client, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    assert set(seen) <= {"queued", "validating_files", "running", "succeeded"}
    name = done.fine_tuned_model
    assert name.startswith(f"ft:{tiny_model_dir.name}:colors:") and len(name.split(":")) == 4
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 4
    assert done.hyperparameters.learning_rate_multiplier == 1.0  # "auto": TuneLab's default
    assert done.method.type == "supervised"
    assert done.method.supervised.hyperparameters.n_epochs == 2

    # Events: newest first, in pages, training metrics among the log's messages.
    first_page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(first_page.data) == 3 and first_page.has_more
    assert first_page.data[0].message == "succeeded" and first_page.data[0].level == "info"
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))  # every page
    assert len({e.id for e in events}) == len(events) > 3
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    metric_events = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metric_events][0] == 8  # 16 rows / 4 per batch * 2 epochs
    assert all(isinstance(e.data.get("train_loss", 0.0), float) for e in metric_events)
    assert any("valid_loss" in e.data for e in metric_events)

    # The kept checkpoints (8 steps, evaluated and checkpointed every 20: only the last one),
    # with their metrics, each a callable model.
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 1
    checkpoint = checkpoints[0]
    assert checkpoint.fine_tuned_model_checkpoint == f"{name}@checkpoint-8"
    assert checkpoint.fine_tuning_job_id == job.id and checkpoint.step_number == 8
    assert isinstance(checkpoint.metrics.valid_loss, float)
    assert isinstance(checkpoint.metrics.train_loss, float)
    assert isinstance(checkpoint.metrics.valid_mean_token_accuracy, float)
    by_checkpoint = client.chat.completions.create(
        model=checkpoint.fine_tuned_model_checkpoint,
        messages=[{"role": "user", "content": "item 1: the green one"}],
        temperature=0,
        max_tokens=4,
    )
    assert by_checkpoint.choices[0].message.content is not None

    # Callable at once, by the name the job gave back.
    assert name in {m.id for m in client.models.list().data}
    chat = client.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "item 1: the green one"}],
        temperature=0,
        max_tokens=4,
    )
    assert isinstance(chat.choices[0].message.content, str) and chat.usage.completion_tokens >= 1

    # DPO from the tuned model (OpenAI's advice too: supervised first, then preferences).
    pairs = upload(client, dpo_rows(8), "pairs.jsonl")
    dpo = client.fine_tuning.jobs.create(
        model=name,
        training_file=pairs.id,
        suffix="concise",
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 4}},
        },
    )
    dpo_done, _ = wait_for(client, dpo.id, {"succeeded", "failed"})
    assert dpo_done.status == "succeeded", dpo_done.error
    assert dpo_done.model == name
    assert dpo_done.fine_tuned_model.startswith(f"ft:{tiny_model_dir.name}:concise:")
    assert dpo_done.method.dpo.hyperparameters.beta == 0.2
    reply = client.chat.completions.create(
        model=dpo_done.fine_tuned_model,
        messages=[{"role": "user", "content": "Question 3?"}],
        temperature=0,
        max_tokens=4,
    )
    assert reply.choices[0].message.content is not None

    # A finished job's files can be deleted; its record keeps their ids.
    deleted = client.files.delete(valid.id)
    assert deleted.deleted and deleted.id == valid.id
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.files.retrieve(valid.id)
    assert client.fine_tuning.jobs.retrieve(job.id).validation_file == valid.id


# ------------------------------------------------------------------------- listing, actions


def test_jobs_list_in_pages_newest_first_with_a_metadata_filter(client, base):
    """No worker: the jobs stay queued while they are listed, then are cancelled at once."""
    train = upload(client, chat_rows(8))
    created = [
        client.fine_tuning.jobs.create(
            model=base, training_file=train.id, suffix=f"s{i}", metadata={"n": str(i % 2)}
        )
        for i in range(3)
    ]
    newest_first = [j.id for j in reversed(created)]

    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == newest_first[:2] and page.has_more
    rest = client.fine_tuning.jobs.list(limit=2, after=page.data[-1].id)
    assert [j.id for j in rest.data] == newest_first[2:] and not rest.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == newest_first  # auto-paging
    odd = client.fine_tuning.jobs.list(metadata={"n": "1"})
    assert [j.id for j in odd.data] == [created[1].id]

    # A file a queued job still needs cannot be deleted.
    from openai import ConflictError

    with pytest.raises(ConflictError) as refused:
        client.files.delete(train.id)
    assert refused.value.body["param"] == "id" and created[0].id in refused.value.message

    for job in created:
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert client.files.delete(train.id).deleted


def test_pause_resume_and_cancel_a_queued_job(client, base):
    """No worker: every action takes effect at once."""
    from openai import ConflictError

    train = upload(client, chat_rows(16))
    queued = client.fine_tuning.jobs.create(model=base, training_file=train.id)
    assert client.fine_tuning.jobs.pause(queued.id).status == "paused"
    assert client.fine_tuning.jobs.resume(queued.id).status == "queued"
    cancelled = client.fine_tuning.jobs.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(ConflictError) as again:
        client.fine_tuning.jobs.cancel(queued.id)
    assert again.value.code == "invalid_job_state" and "CANCELLED" in again.value.message
    with pytest.raises(ConflictError):
        client.fine_tuning.jobs.resume(queued.id)


def test_a_running_job_pauses_resumes_and_cancels(client, worker, base):
    """Pause lands after a checkpoint, resume continues from it, cancel stops it at a step."""
    # Long enough (64 rows x 1000 epochs) that it cannot finish between two polls, however fast
    # the training step gets: the test needs it running when it pauses, resumes and cancels.
    train = upload(client, chat_rows(64))
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=train.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1000}}},
    )
    wait_for(client, job.id, {"running"})
    client.fine_tuning.jobs.pause(job.id)
    paused, _ = wait_for(client, job.id, {"paused"})
    assert paused.finished_at is None and paused.fine_tuned_model is None
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "paused after a checkpoint" in messages
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    wait_for(client, job.id, {"running"})
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    deadline = time.monotonic() + 60
    while client.fine_tuning.jobs.retrieve(job.id).finished_at is None:  # the worker stops it
        assert time.monotonic() < deadline, "the worker never carried out the cancel"
        time.sleep(0.2)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "cancelled; stopped at a step boundary" in messages
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


# ---------------------------------------------------------------------------------- errors


def test_bad_files_fail_the_job_with_their_line_numbers(client, worker, base):
    bad_chat = upload(
        client,
        [
            *chat_rows(2),
            {"messages": [{"role": "robot", "content": "hi"}]},  # line 3
            "{not json",  # line 4
            {"prompt": "legacy completions format"},  # line 5
        ],
    )
    job = client.fine_tuning.jobs.create(model=base, training_file=bad_chat.id)
    failed, seen = wait_for(client, job.id, {"failed", "succeeded"})
    assert failed.status == "failed" and "running" not in seen  # never trained
    assert failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file"
    for line in ("line 3: messages[0].role", "line 4:", "line 5:"):
        assert line in failed.error.message
    assert bad_chat.id in failed.error.message and "3 invalid line(s)" in failed.error.message
    assert client.fine_tuning.jobs.list_events(job.id).data[0].level == "error"

    good = upload(client, chat_rows(8))
    bad_pairs = upload(client, [*dpo_rows(2), {**dpo_rows(1)[0], "non_preferred_output": []}])
    job = client.fine_tuning.jobs.create(
        model=base, training_file=good.id, validation_file=bad_pairs.id, method={"type": "dpo"}
    )
    failed, _ = wait_for(client, job.id, {"failed", "succeeded"})
    assert failed.error.code == "invalid_training_file"  # the chat file is not pairs
    assert "line 1: messages[2].role: the last turn must be a user turn" in failed.error.message

    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=upload(client, dpo_rows(4)).id,
        validation_file=bad_pairs.id,
        method={"type": "dpo"},
    )
    failed, _ = wait_for(client, job.id, {"failed", "succeeded"})
    assert (failed.error.code, failed.error.param) == ("invalid_validation_file", "validation_file")
    assert "line 3: non_preferred_output: empty array" in failed.error.message

    job = client.fine_tuning.jobs.create(model="no-such-base", training_file=good.id)
    failed, _ = wait_for(client, job.id, {"failed", "succeeded"})
    assert (failed.error.code, failed.error.param) == ("model_not_found", "model")
    assert "no-such-base" in failed.error.message


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"training_file": "ds-nothere"}, "training_file", "no file"),
        ({"validation_file": "file-x"}, "validation_file", "no file"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "method.supervised.hyperparameters.n_epochs",
            "greater than or equal to 1",
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}},
            "method.dpo.hyperparameters.beta",
            "greater than 0",
        ),
        ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size", "greater"),
        ({"method": {"type": "reinforcement"}}, "method.type", "not supported"),
        ({"suffix": "a:b"}, "suffix", "pattern"),
        (
            {"method": {"type": "dpo"}, "hyperparameters": {"n_epochs": 2}},
            "hyperparameters",
            "method.dpo.hyperparameters",
        ),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
    ],
)
def test_bad_requests_are_refused_in_openais_shape(client, base, kwargs, param, words):
    from openai import BadRequestError

    train = upload(client, chat_rows(4))
    with pytest.raises(BadRequestError) as refused:
        client.fine_tuning.jobs.create(**{"model": base, "training_file": train.id, **kwargs})
    error = refused.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    assert error.param == param and words in error.message
    assert list(client.fine_tuning.jobs.list()) == []  # nothing was queued


def test_unknown_ids_wrong_purpose_and_missing_keys(client, server):
    from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI

    with pytest.raises(NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("job-nothere")
    assert missing.value.code == "fine_tuning_job_not_found"
    for call in (
        lambda: client.fine_tuning.jobs.list_events("job-nothere"),
        lambda: client.fine_tuning.jobs.checkpoints.list("job-nothere"),
        lambda: client.files.retrieve("ds-nothere"),
        lambda: client.files.content("ds-nothere"),
        lambda: client.files.delete("ds-nothere"),
    ):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(BadRequestError) as purpose:
        client.files.create(file=jsonl(chat_rows(1)), purpose="assistants")
    assert purpose.value.param == "purpose"
    stranger = OpenAI(base_url=server.url + "/v1", api_key="tl-nothere.wrong", max_retries=0)
    with pytest.raises(AuthenticationError) as refused:
        stranger.fine_tuning.jobs.list()
    assert refused.value.body["type"] == "authentication_error"


def test_files_are_datasets_listed_in_pages(client, server, api_key):
    import httpx

    files = [upload(client, chat_rows(2, offset=10 * i), f"f{i}.jsonl") for i in range(3)]
    assert upload(client, chat_rows(2), "again.jsonl").id == files[0].id  # same bytes, same id
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == [files[2].id, files[1].id] and page.has_more
    assert [f.id for f in client.files.list(limit=1, order="asc")] == [f.id for f in files]
    assert list(client.files.list(purpose="batch")) == []
    # The Vertex-style API sees the same datasets, and its sft jobs are fine-tuning jobs here.
    with httpx.Client(base_url=server.url, headers={"x-api-key": api_key}) as http:
        assert http.get(f"/v1/datasets/{files[1].id}").json()["sha256"]
        job = http.post(
            "/v1/tuningJobs",
            json={"tuned_model_display_name": "vertex-made", "train_dataset": files[1].id},
        ).json()
    listed = client.fine_tuning.jobs.retrieve(job["id"])
    assert (listed.status, listed.training_file, listed.method.type) == (
        "queued",
        files[1].id,
        "supervised",
    )
    assert listed.hyperparameters.n_epochs == 3  # TuneLab's default, resolved


@pytest.fixture
def small_body_server(services):
    """A server whose JSON body limit is 2 KB (uploads keep their own, larger limit)."""
    from tunelab.api.app import create_app

    with LiveServer(create_app(services, body_limit=2048, upload_limit=64 * 1024)) as live:
        yield live


def test_file_uploads_get_the_upload_limit_not_the_json_one(small_body_server, api_key):
    from openai import APIStatusError, OpenAI

    client = OpenAI(base_url=small_body_server.url + "/v1", api_key=api_key, max_retries=0)
    rows = chat_rows(60)  # ~8 KB: over the JSON limit, under the upload limit
    assert client.files.create(file=jsonl(rows), purpose="fine-tune").bytes > 2048
    with pytest.raises(APIStatusError) as refused:
        client.files.create(file=jsonl(chat_rows(600)), purpose="fine-tune")
    assert refused.value.status_code == 413

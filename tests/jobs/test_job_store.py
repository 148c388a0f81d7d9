"""The job store on SQLite and PostgreSQL: legal transitions only, idempotent submission,
concurrent submissions, atomic claims and lease expiry, registry versions and lineage."""

import multiprocessing as mp
import signal
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from support import write_jsonl

from tunelab.configs import SFTConfig
from tunelab.db.schema import TuningJob, utcnow
from tunelab.jobs import store
from tunelab.jobs.states import TRANSITIONS, IllegalTransition, JobState, check_transition
from tunelab.jobs.submit import submit_job

S = JobState


def fork_pool(processes):
    """A pool of forked children with SIGTERM back at its default: a child inherits the test
    process's handlers, and one that ignored SIGTERM would hang the pool's terminate()."""
    return mp.get_context("fork").Pool(
        processes, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL)
    )


def rows(n=20):
    return [{"input_text": f"q{i}", "output_text": f"a{i}"} for i in range(n)]


def new_job(services, tmp_path, key=None, name="m"):
    train = write_jsonl(tmp_path / "train.jsonl", rows())
    return submit_job(
        services.db,
        services.artifacts,
        config=SFTConfig(train_steps=2),
        name=name,
        datasets={"train": train},
        idempotency_key=key,
    )


def test_every_illegal_transition_is_refused():
    for source in JobState:
        for target in JobState:
            if target in TRANSITIONS[source]:
                check_transition("j", source, target)
            else:
                with pytest.raises(IllegalTransition):
                    check_transition("j", source, target)
    assert (
        not TRANSITIONS[S.SUCCEEDED] and not TRANSITIONS[S.CANCELLED] and not TRANSITIONS[S.FAILED]
    )


def test_store_refuses_illegal_transitions(services, tmp_path):
    job, _ = new_job(services, tmp_path)
    with pytest.raises(IllegalTransition, match="QUEUED; it cannot become SUCCEEDED"):
        store.transition(services.db, job.id, S.SUCCEEDED)
    store.request_cancel(services.db, job.id)
    assert store.get_job(services.db, job.id).state == S.CANCELLED
    for action in (store.resume, store.request_pause, store.request_cancel):
        with pytest.raises(IllegalTransition):
            action(services.db, job.id)


def test_job_resource_and_idempotency(services, tmp_path):
    job, created = new_job(services, tmp_path, key="k-1")
    again, created_again = new_job(services, tmp_path, key="k-1")
    assert created and not created_again and again.id == job.id
    other, _ = new_job(services, tmp_path, key="k-2")
    assert other.id != job.id
    assert job.state == S.QUEUED and job.method == "sft" and job.config["train_steps"] == 2
    assert [s.name for s in store.steps_of(services.db, job.id)] == [
        "validate",
        "prepare",
        "train",
        "evaluate",
        "register",
        "deploy",
    ]
    assert job.datasets["train"].startswith("ds-")
    with pytest.raises(ValueError, match="128"):
        store.create_job(
            services.db,
            display_name="x" * 129,
            method="sft",
            base_model="b",
            config={},
            datasets={},
            steps=[],
        )


def _submit_many(args):
    url, artifacts, train, count, offset = args
    import os

    os.environ["TUNELAB_DATABASE_URL"], os.environ["TUNELAB_ARTIFACTS_URL"] = url, artifacts
    from pathlib import Path

    from tunelab.db.engine import _open
    from tunelab.services import open_services

    _open.clear()  # engines do not survive fork
    services = open_services()
    ids, errors = [], []

    def one(i):
        try:
            job, _ = submit_job(
                services.db,
                services.artifacts,
                config=SFTConfig(train_steps=2),
                name=f"m{i}",
                datasets={"train": Path(train)},
            )
            ids.append(job.id)
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, args=(offset + i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids, errors


def test_fifty_concurrent_submissions(services, db_url, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", rows())
    with fork_pool(10) as pool:
        results = pool.map(
            _submit_many,
            [(db_url, str(tmp_path / "artifacts"), str(train), 5, 5 * k) for k in range(10)],
        )
    ids = [i for r in results for i in r[0]]
    errors = [e for r in results for e in r[1]]
    assert errors == []
    assert len(set(ids)) == 50
    assert len(store.list_jobs(services.db, limit=100)) == 50


def test_claim_is_exclusive_and_leases_expire(services, tmp_path):
    job, _ = new_job(services, tmp_path)
    first = store.claim(services.db, "host:1:a", lease_seconds=60)
    assert first.id == job.id and first.state == S.PENDING
    assert store.claim(services.db, "host:2:b", lease_seconds=60) is None  # held under a live lease
    beat = store.heartbeat(services.db, job.id, "host:1:a", 60)
    assert beat.held
    # The worker dies: its lease runs out without a heartbeat.
    with services.db.session() as s:
        s.execute(
            update(TuningJob)
            .where(TuningJob.id == job.id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    second = store.claim(services.db, "host:2:b", lease_seconds=60)
    assert second.id == job.id and second.worker_id == "host:2:b"
    assert not store.heartbeat(services.db, job.id, "host:1:a", 60).held  # the old worker learns it
    with pytest.raises(store.LeaseLost):
        store.transition(services.db, job.id, S.RUNNING, by_worker="host:1:a")
    events = [e.message for e in store.events_of(services.db, job.id)]
    assert any("reclaimed from host:1:a" in m for m in events)


def _claim_all(args):
    url, worker = args
    import os

    os.environ["TUNELAB_DATABASE_URL"] = url
    from tunelab.db.engine import _open
    from tunelab.services import open_services

    _open.clear()
    db = open_services().db
    got = []
    while (job := store.claim(db, worker, lease_seconds=600)) is not None:
        got.append(job.id)
    return got


def test_racing_claims_take_each_job_exactly_once(services, db_url, tmp_path):
    for i in range(30):
        new_job(services, tmp_path, name=f"m{i}")
    with fork_pool(4) as pool:
        claimed = pool.map(_claim_all, [(db_url, f"host:{k}:w") for k in range(4)])
    flat = [j for c in claimed for j in c]
    assert len(flat) == 30 and len(set(flat)) == 30


def test_pause_and_cancel_requests_reach_the_worker(services, tmp_path):
    job, _ = new_job(services, tmp_path)
    store.claim(services.db, "host:1:a", 60)
    store.transition(services.db, job.id, S.RUNNING, by_worker="host:1:a")
    store.request_pause(services.db, job.id)
    assert store.heartbeat(services.db, job.id, "host:1:a", 60).requested_action == "pause"
    store.request_cancel(services.db, job.id)
    beat = store.heartbeat(services.db, job.id, "host:1:a", 60)
    assert beat.state == S.CANCELLING and beat.requested_action == "cancel"

"""A job's working folder (resume checkpoints with optimizer state, metrics) goes when the job
succeeds or is cancelled: it was removed on success only, so every cancelled job left its
checkpoints under $TUNELAB_HOME/work for good. A job that may still continue (queued, paused)
keeps it, a failed one too (its last checkpoint is promised intact after a full disk), and a
folder this database knows no job of is left alone."""

import json

from support import write_jsonl

from tunelab.config import get_settings
from tunelab.configs import SFTConfig
from tunelab.jobs import store
from tunelab.jobs.retention import prune_workdirs
from tunelab.jobs.submit import submit_job
from tunelab.jobs.worker import Worker


def _submit(services, tmp_path, name, rows, base="smollm2-135m-instruct"):
    job, _ = submit_job(
        services.db,
        services.artifacts,
        config=SFTConfig(base_model=str(base)),
        name=name,
        datasets={"train": write_jsonl(tmp_path / f"{name}.jsonl", rows)},
    )
    return job


def _with_checkpoint(job_id):
    """A working folder as a run leaves it: a resume checkpoint inside."""
    folder = get_settings().work / job_id / "run" / "checkpoints" / "step-00000002"
    folder.mkdir(parents=True)
    (folder / "optimizer.safetensors").write_bytes(b"\0" * 1024)
    return get_settings().work / job_id


def test_a_failed_job_keeps_its_working_folder(services, tmp_path, tiny_model_dir):
    job = _submit(services, tmp_path, "bad", [{"input_text": "no output"}], tiny_model_dir)
    folder = _with_checkpoint(job.id)  # e.g. from an earlier attempt
    assert Worker(services.db, services.artifacts).run_job(job.id).state == "FAILED"
    assert store.get_job(services.db, job.id).error["code"] == "invalid_dataset"
    assert folder.is_dir()
    assert prune_workdirs(services.db) == []


def test_the_worker_sweeps_jobs_that_ended_without_it_and_keeps_the_others(services, tmp_path):
    row = {"input_text": "a", "output_text": "b"}
    cancelled = _submit(services, tmp_path, "cancelled", [row])
    paused = _submit(services, tmp_path, "paused", [row, row])
    queued = _submit(services, tmp_path, "queued", [row, row, row])
    folders = {j.id: _with_checkpoint(j.id) for j in (cancelled, paused, queued)}
    stranger = _with_checkpoint("job-0123456789abcdef")  # another database's job
    store.request_pause(services.db, paused.id)
    store.request_pause(services.db, cancelled.id)
    store.request_cancel(services.db, cancelled.id)  # paused, then cancelled: no worker held it

    assert Worker(services.db, services.artifacts).run_forever(max_jobs=0) == 0  # only sweeps
    assert not folders[cancelled.id].exists()
    assert folders[paused.id].is_dir() and folders[queued.id].is_dir()  # they may resume
    assert stranger.is_dir()
    assert prune_workdirs(services.db) == []  # nothing more to do
    (get_settings().work / "notes.json").write_text(json.dumps({}))  # not a job's folder
    assert prune_workdirs(services.db) == []

"""What a job leaves under ``$TUNELAB_HOME/work`` once it has ended.

A job's working folder (``work/<job id>``) holds its resume checkpoints (adapter and optimizer
state), metrics log and, while training, its kept checkpoints: everything a paused, requeued or
retried job continues from. A job that succeeded or was cancelled never continues, and what it
made that a user can reach (the adapter, kept checkpoints, metrics, events) is in the artifact
store and the database by then, so its folder goes: the worker removes it as it records the
end (on success it always did), and sweeps at its start for jobs that ended without a worker
(a paused or queued job cancelled from the API or CLI) or whose worker was killed first.

A FAILED job's folder stays: its last checkpoint is what a disk-full failure promises intact
("free space and resubmit", tests/jobs/test_failures.py), and what someone debugging it reads.

Only folders of jobs this database knows to have ended are removed: a folder for a job it does
not know may belong to another database sharing the home.
"""

from __future__ import annotations

import logging
import re
import shutil

from tunelab.config import get_settings
from tunelab.db import Database
from tunelab.jobs import store
from tunelab.jobs.states import JobState

logger = logging.getLogger(__name__)

REMOVED_WHEN = frozenset({JobState.SUCCEEDED, JobState.CANCELLED})
"""The ends after which a job's working folder is removed (not FAILED: see above)."""

JOB_DIR = re.compile(r"^job-[0-9a-z]+$")
"""A job's working folder is named by its id (store.create_job makes ``job-`` ids)."""


def remove_workdir(job_id: str) -> bool:
    """Remove the working folder of ``job_id``, a job that succeeded or was cancelled; whether
    there was one."""
    folder = get_settings().work / job_id
    if not JOB_DIR.match(job_id) or not folder.is_dir():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("removed the working folder of ended job %s", job_id)
    return True


def prune_workdirs(db: Database) -> list[str]:
    """Remove the working folders of every job that succeeded or was cancelled; the job ids."""
    work = get_settings().work
    if not work.is_dir():
        return []
    removed = []
    for folder in sorted(work.iterdir()):
        if not (folder.is_dir() and JOB_DIR.match(folder.name)):
            continue
        try:
            state = store.get_job(db, folder.name).state
        except store.JobNotFound:
            continue
        if state in REMOVED_WHEN and remove_workdir(folder.name):
            removed.append(folder.name)
    return removed

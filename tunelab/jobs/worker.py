"""The worker: claims jobs, runs their pipelines, and keeps its lease alive while it does.

A heartbeat thread renews the lease every ``lease/3`` seconds and reads what users asked for
(cancel, pause). The pipeline polls :meth:`Worker._should_stop` between training steps, so a
cancel, a pause or a SIGTERM takes effect within a step: training writes a checkpoint, and the
job becomes CANCELLED, PAUSED or QUEUED again (SIGTERM: another worker, or this one restarted,
continues it). A worker killed outright (SIGKILL, power loss) stops renewing its lease; once the
lease expires the next worker reclaims the job and resumes it from its last checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import get_settings
from tunelab.db import Database
from tunelab.db.schema import TuningJob
from tunelab.jobs import store
from tunelab.jobs.errors import classify
from tunelab.jobs.methods import pipeline_for
from tunelab.jobs.pipeline import StepContext, StopRequested
from tunelab.jobs.retention import REMOVED_WHEN, prune_workdirs, remove_workdir
from tunelab.jobs.states import IllegalTransition, JobState
from tunelab.registry.artifacts import ArtifactStore
from tunelab.training.metrics import MetricsLog

logger = logging.getLogger(__name__)
S = JobState

MAX_ATTEMPTS = 3
"""Transient failures retried per job before it is FAILED."""


@dataclass
class RunOutcome:
    job_id: str
    state: str


class Worker:
    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        *,
        worker_id: str | None = None,
        lease_seconds: float | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        run_recipe: Callable[..., Any] | None = None,
    ) -> None:
        """``run_recipe``: where training runs (tunelab.training.launch's, the default: local
        processes; or a :class:`tunelab.jobs.ray_executor.RayExecutor`'s: a Ray cluster)."""
        self.db, self.artifacts = db, artifacts
        self.run_recipe = run_recipe
        self.id = worker_id or store.worker_identity()
        self.lease_seconds = lease_seconds or get_settings().lease_seconds
        self.max_attempts = max_attempts
        self.shutdown = threading.Event()
        """Set by SIGTERM: finish the current step with a checkpoint, requeue the job, exit."""
        self._action: str | None = None
        self._lease_lost = False

    # ------------------------------------------------------------ loop

    def run_forever(self, poll_seconds: float = 1.0, max_jobs: int | None = None) -> int:
        self._sweep()
        done = 0
        while not self.shutdown.is_set() and (max_jobs is None or done < max_jobs):
            job = store.claim(self.db, self.id, self.lease_seconds)
            if job is None:
                self.shutdown.wait(poll_seconds)
                continue
            self.run_claimed(job)
            done += 1
        return done

    def run_job(self, job_id: str) -> RunOutcome | None:
        """Claim one specific job and run it (the CLI's in-process path). None if not claimable."""
        self._sweep()
        job = store.claim(self.db, self.id, self.lease_seconds, job_id=job_id)
        return self.run_claimed(job) if job is not None else None

    # ------------------------------------------------------------ one job

    def run_claimed(self, job: TuningJob) -> RunOutcome:
        self._action, self._lease_lost = job.requested_action, False
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job.id, beat_stop), daemon=True)
        beat.start()
        try:
            return self._run(job)
        finally:
            beat_stop.set()
            beat.join()

    def _run(self, job: TuningJob) -> RunOutcome:
        if job.state == S.CANCELLING:  # its previous worker died while cancelling
            return self._finish(job.id, S.CANCELLED, message="cancelled")
        pipeline = pipeline_for(job.method)
        try:
            store.transition(
                self.db, job.id, S.RUNNING, by_worker=self.id, message=f"running on {self.id}"
            )
        except IllegalTransition:
            # Cancelled between the claim and now (PENDING -> CANCELLING): nothing ran yet.
            # Raising here would end run_forever and leave the job CANCELLING for good.
            if store.get_job(self.db, job.id).state != S.CANCELLING:
                raise
            return self._finish(job.id, S.CANCELLED, message="cancelled before it started")
        workdir = get_settings().work / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        done = {s.name: s for s in store.steps_of(self.db, job.id)}
        outputs = {
            name: s.outputs for name, s in done.items() if s.state in ("SUCCEEDED", "SKIPPED")
        }
        base_progress = 0.0
        shown = 0.0  # the bar never goes backwards within a run, whatever a step reports

        def report(text: str, progress: float, eta: float | None) -> None:
            nonlocal shown
            shown = max(shown, progress)
            store.set_progress(self.db, job.id, self.id, text, shown, eta)

        ctx = StepContext(
            db=self.db,
            store=self.artifacts,
            job=job,
            workdir=workdir,
            outputs=outputs,
            report=report,
            should_stop=self._should_stop,
            on_metrics=lambda path: self._sync_metrics(job.id, path),
            **({"run_recipe": self.run_recipe} if self.run_recipe else {}),
        )
        try:
            for name, step in pipeline.steps:
                weight = pipeline.weights.get(name, 0.0)
                if name in outputs:
                    base_progress += weight
                    continue
                ctx.check_stop()
                store.set_step_state(self.db, job.id, name, "RUNNING")
                report(_STEP_TEXT.get(name, name), base_progress, None)
                result = step(ctx)
                state = "SKIPPED" if "skipped" in result else "SUCCEEDED"
                store.set_step_state(self.db, job.id, name, state, outputs=result)
                outputs[name] = result
                base_progress += weight
                if name == "train":
                    store.update_job(self.db, job.id, usage=result.get("usage"))
        except StopRequested:
            return self._stopped(job.id)
        except store.LeaseLost:
            logger.warning("lost the lease on %s; leaving it to its new worker", job.id)
            return RunOutcome(job.id, "LEASE_LOST")
        except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
            return self._failed(job, exc)
        registered = outputs.get("register", {})
        # The adapter is in the artifact store now; checkpoints are no longer needed.
        shutil.rmtree(workdir, ignore_errors=True)
        if store.get_job(self.db, job.id).state == S.CANCELLING:
            # The cancel came during the last step, after its last stop check (the heartbeat
            # may not even have seen it): CANCELLING can only end CANCELLED, never SUCCEEDED.
            return self._finish(job.id, S.CANCELLED, message="cancelled as its last step ended")
        return self._finish(
            job.id,
            S.SUCCEEDED,
            message="succeeded",
            progress=1.0,
            step=None,
            eta_seconds=None,
            tuned_model_version=registered.get("version"),
            endpoint=outputs.get("deploy", {}).get("endpoint"),
        )

    def _stopped(self, job_id: str) -> RunOutcome:
        if self._lease_lost:
            return RunOutcome(job_id, "LEASE_LOST")
        if self._action == "cancel":
            return self._finish(
                job_id, S.CANCELLED, message="cancelled; stopped at a step boundary"
            )
        if self._action == "pause":
            return self._finish(
                job_id,
                S.PAUSED,
                message="paused after a checkpoint",
                requested_action=None,
                release=True,
            )
        # SIGTERM: give the job back to the queue, with its checkpoint.
        return self._finish(
            job_id,
            S.QUEUED,
            message=f"worker {self.id} shutting down; requeued",
            release=True,
        )

    def _failed(self, job: TuningJob, exc: Exception) -> RunOutcome:
        error = classify(exc)
        current = store.get_job(self.db, job.id)
        attempts = current.attempts + 1
        if current.state == S.CANCELLING:
            # The user asked to cancel and the run failed on its way out (e.g. its training
            # processes were torn down): that is the cancel done. A retry would be an illegal
            # CANCELLING -> QUEUED, and the exception would end this worker's loop.
            return self._finish(
                job.id,
                S.CANCELLED,
                message=f"cancelled (the run ended with an error while stopping: {error.message})",
                attempts=attempts,
            )
        if not error.permanent and attempts < self.max_attempts:
            logger.warning(
                "job %s: transient error (attempt %d/%d): %s",
                job.id,
                attempts,
                self.max_attempts,
                exc,
            )
            return self._finish(
                job.id,
                S.QUEUED,
                message=f"transient error, retrying: {error.message}",
                attempts=attempts,
                release=True,
            )
        logger.error("job %s failed: %s", job.id, error.message)
        store.set_step_state(
            self.db,
            job.id,
            _running_step(self.db, job.id),
            "FAILED",
            outputs={"error": error.to_dict()},
        )
        return self._finish(
            job.id,
            S.FAILED,
            message=f"failed: {error.message}",
            error=error.to_dict(),
            attempts=attempts,
        )

    def _finish(self, job_id: str, state: JobState, message: str, **fields) -> RunOutcome:
        try:
            store.transition(self.db, job_id, state, by_worker=self.id, message=message, **fields)
        except store.LeaseLost:
            return RunOutcome(job_id, "LEASE_LOST")
        if state in REMOVED_WHEN:  # it never continues: its checkpoints go (jobs.retention)
            remove_workdir(job_id)
        return RunOutcome(job_id, str(state))

    def _sweep(self) -> None:
        """The working folders of jobs that ended without a worker (e.g. cancelled while
        paused); a failure here is logged, never a reason not to run jobs."""
        try:
            prune_workdirs(self.db)
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not sweep ended jobs' working folders: %s", exc)

    # ------------------------------------------------------------ heartbeat and stop

    def _heartbeat(self, job_id: str, stop: threading.Event) -> None:
        interval = max(0.2, self.lease_seconds / 3)
        while not stop.wait(interval):
            try:
                beat = store.heartbeat(self.db, job_id, self.id, self.lease_seconds)
            except Exception as exc:  # noqa: BLE001 - a DB hiccup must not kill the worker
                logger.warning("heartbeat for %s failed: %s", job_id, exc)
                continue
            if not beat.held:
                self._lease_lost = True
            if beat.requested_action:
                self._action = beat.requested_action

    def _should_stop(self) -> bool:
        return self.shutdown.is_set() or self._lease_lost or self._action in ("cancel", "pause")

    def _sync_metrics(self, job_id: str, path: Path) -> None:
        """Mirror the training metrics file into the store (rows past a resume point replaced)."""
        rows = MetricsLog(path).rows()
        stored = store.max_metric_step(self.db, job_id)
        last = rows[-1]["step"] if rows else 0
        keep_upto = min(stored, last)
        new = [r for r in rows if r.get("step", 0) > keep_upto]
        if new or stored > last:
            store.replace_metrics_after(self.db, job_id, keep_upto, new)


_STEP_TEXT = {
    "validate": "validating",
    "prepare": "preparing",
    "train": "training",
    "evaluate": "evaluating",
    "register": "registering",
    "deploy": "deploying",
}


def _running_step(db: Database, job_id: str) -> str:
    steps = store.steps_of(db, job_id)
    running = [s.name for s in steps if s.state == "RUNNING"]
    return running[0] if running else steps[0].name

"""Job states, as Vertex AI names them, and the only transitions allowed between them.

QUEUED ──claim──> PENDING ──> RUNNING ──> SUCCEEDED
  │                  │           ├──> FAILED
  │                  │           ├──pause──> PAUSED ──resume──> QUEUED
  │                  │           ├──cancel──> CANCELLING ──> CANCELLED
  │                  │           └──release (SIGTERM, lost lease)──> QUEUED
  └──cancel──> CANCELLED        PENDING may also fail, be cancelled or be released.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"


S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.PENDING, S.PAUSED, S.CANCELLED}),
    S.PENDING: frozenset({S.RUNNING, S.QUEUED, S.FAILED, S.CANCELLING, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.PAUSED, S.CANCELLING, S.QUEUED, S.PENDING}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
"""RUNNING -> PENDING is a new worker reclaiming a job whose worker died (lease expired)."""

TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
ACTIVE = frozenset({S.PENDING, S.RUNNING, S.CANCELLING})
"""States in which a worker holds the job under a lease."""


class IllegalTransition(ValueError):
    def __init__(self, job_id: str, current: str, target: str) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[JobState(current)])) or "none (terminal state)"
        super().__init__(
            f"job {job_id} is {current}; it cannot become {target} (allowed: {allowed})"
        )
        self.current, self.target = current, target


def check_transition(job_id: str, current: str, target: str) -> None:
    if JobState(target) not in TRANSITIONS[JobState(current)]:
        raise IllegalTransition(job_id, current, target)

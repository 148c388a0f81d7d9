"""Which failures are worth retrying. A permanent error (bad data, bad config, a model that does
not exist, a full disk) fails the job at once with ``{code, message, details}``; anything else is
taken as transient and retried a bounded number of times."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any


class PermanentError(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


@dataclass
class JobError:
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    permanent: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


def classify(exc: BaseException) -> JobError:
    from pydantic import ValidationError

    from tunelab.configs.compute import AcceleratorUnavailable
    from tunelab.data.validation import DatasetValidationError
    from tunelab.models.catalog import ModelNotFoundError, UnsafeModelError

    if isinstance(exc, PermanentError):
        return JobError(exc.code, exc.message, exc.details)
    if isinstance(exc, DatasetValidationError):
        report = exc.report
        return JobError(
            "invalid_dataset",
            str(exc).splitlines()[0],
            {
                "file": report.path,
                "error_count": report.error_count,
                "errors": [e.to_dict() for e in report.errors],
            },
        )
    if isinstance(exc, ValidationError):
        return JobError(
            "invalid_config", "invalid tuning parameters", {"errors": exc.errors(include_url=False)}
        )
    if isinstance(exc, AcceleratorUnavailable):  # a worker without the GPU the job asks for
        return JobError("accelerator_unavailable", str(exc), {"field": exc.field})
    if isinstance(exc, (ModelNotFoundError, UnsafeModelError)):
        return JobError(
            "model_not_found" if isinstance(exc, ModelNotFoundError) else "unsafe_model", str(exc)
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return JobError(
            "disk_full",
            f"no space left on device while writing {exc.filename or 'job files'}; the previous "
            "checkpoint is intact: free space and resubmit",
            {"errno": exc.errno, "filename": str(exc.filename) if exc.filename else None},
        )
    return JobError("internal", f"{type(exc).__name__}: {exc}", {}, permanent=False)

"""A client's uploaded file, stored as a dataset: the one way both upload routes (``/v1/datasets``
and OpenAI's ``/v1/files``) take bytes from a request onto disk."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from fastapi import UploadFile
from fastapi.concurrency import run_in_threadpool

from tunelab.registry.datasets import register_dataset
from tunelab.services import Services


async def register_upload(
    services: Services, file: UploadFile, refuse_empty: Callable[[], Exception] | None = None
):
    """Spool ``file`` to a server-named temporary file and register it as a dataset (the same
    bytes give the same dataset). The client's filename is recorded for display only, never used
    as a path. ``refuse_empty``: the error to raise for an empty file, where a route refuses one."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jsonl"  # never the client's filename as a path
        with open(path, "wb") as out:
            await run_in_threadpool(shutil.copyfileobj, file.file, out, 1 << 20)
        if refuse_empty is not None and path.stat().st_size == 0:
            raise refuse_empty()
        return await run_in_threadpool(
            register_dataset,
            services.db,
            services.artifacts,
            path,
            (file.filename or "upload.jsonl")[:255],
        )

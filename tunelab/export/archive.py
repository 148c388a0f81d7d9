"""Exports made by the server: the export folder packed as one tar file in the artifact store,
under an id the server made (``exp-`` + 16 hex digits), so a download names the id and never a
path. A small JSON record beside it says what it holds.

An export is a copy of a registered version, made again at will, so it is kept only for a while:
``TUNELAB_EXPORT_TTL_HOURS`` (default 24; 0 keeps them) after it was made it is deleted, and a
download of it answers that it expired. Expired exports are swept whenever an export is made or
downloaded and when the server starts (there is no background timer), together with the
working folders of exports that a killed server left half made."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.bundle import sha256_file
from tunelab.config import get_settings
from tunelab.export import export_model

logger = logging.getLogger(__name__)

EXPORT_ID = re.compile(r"^exp-[0-9a-f]{16}$")


class ExportNotFound(LookupError):
    pass


@dataclass
class ExportRecord:
    id: str
    model: str
    format: str
    quantization: str | None
    filename: str
    size_bytes: int
    sha256: str
    files: list[str]
    uri: str
    created_at: float | None = None
    """Unix time it was made (None in records written before exports expired: their age is
    the record file's)."""
    expires_at: float | None = None
    """Unix time it is deleted after (None: kept, with ``TUNELAB_EXPORT_TTL_HOURS=0``)."""


def create_export(services, ref: str, fmt: str, quantization: str | None) -> ExportRecord:
    """Export ``ref`` as ``fmt``, pack it as ``<model>-v<version>-<format>.tar`` (a folder of
    that name inside), store it, and return its record."""
    prune_exports(services)
    export_id = "exp-" + uuid.uuid4().hex[:16]
    work = get_settings().home / "exports"
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{export_id}-", dir=work))
    try:
        result = export_model(services, ref, fmt, tmp / "out", quantization)
        stem = (
            result.model.replace("@", "-v")
            + f"-{fmt}"
            + (f"-{result.quantization}" if result.quantization else "")
        )
        archive = tmp / f"{stem}.tar"
        # GGUF and safetensors barely compress: a plain tar is as small and much faster.
        with tarfile.open(archive, "w") as tar:
            tar.add(result.folder, arcname=stem)
        stored = services.artifacts.put_file(archive, f"exports/{export_id}.tar")
        record = ExportRecord(
            id=export_id,
            model=result.model,
            format=fmt,
            quantization=result.quantization,
            filename=archive.name,
            size_bytes=stored.size_bytes,
            sha256=sha256_file(archive),
            files=result.files,
            uri=stored.uri,
            created_at=time.time(),
        )
        ttl = _ttl_seconds()
        record.expires_at = record.created_at + ttl if ttl else None
        meta = tmp / "record.json"
        meta.write_text(json.dumps(asdict(record)))
        services.artifacts.put_file(meta, f"exports/{export_id}.json")
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def get_export(services, export_id: str) -> tuple[ExportRecord, Path]:
    """The record of an export and a local path to its tar file; :class:`ExportNotFound` for
    an id that names none, or one that expired (which is deleted then)."""
    if not EXPORT_ID.match(export_id):
        raise ExportNotFound(f"{export_id!r} is not an export id (exp- and 16 hex digits)")
    record = _read_record(services, export_id)
    if record is None:
        raise ExportNotFound(f"no export {export_id} (exports are kept {_kept_for()})")
    if _expired(services, record, time.time()):
        delete_export(services, record)
        raise ExportNotFound(f"export {export_id} expired ({_kept_for()}): export the model again")
    prune_exports(services)  # the others
    return record, services.artifacts.local_path(record.uri)


def _ttl_seconds() -> float:
    return get_settings().export_ttl_hours * 3600


def _kept_for() -> str:
    hours = get_settings().export_ttl_hours
    return f"{hours:g} hours after they are made" if hours else "until deleted"


def _record_key(export_id: str) -> str:
    return f"exports/{export_id}.json"


def _read_record(services, export_id: str) -> ExportRecord | None:
    try:
        text = services.artifacts.read_text(services.artifacts.uri(_record_key(export_id)))
        return ExportRecord(**json.loads(text))
    except (OSError, ValueError, TypeError):  # FileNotFoundError is an OSError
        return None


def _expired(services, record: ExportRecord, now: float) -> bool:
    ttl = _ttl_seconds()
    if not ttl:
        return False
    made = record.created_at
    if made is None:  # an export from before expiry: its record file's age
        made = services.artifacts.modified(services.artifacts.uri(_record_key(record.id)))
    return made is not None and now - made >= ttl


def delete_export(services, record: ExportRecord) -> None:
    """Delete an export's archive, then its record (a record without its archive would be
    listed as downloadable)."""
    services.artifacts.delete(record.uri)
    services.artifacts.delete(services.artifacts.uri(_record_key(record.id)))
    logger.info("deleted export %s (%s, %s)", record.id, record.model, record.format)


def prune_exports(services, now: float | None = None) -> list[str]:
    """Delete the exports older than ``TUNELAB_EXPORT_TTL_HOURS`` and the working folders of
    exports a killed process left half made; the ids deleted."""
    if not _ttl_seconds():
        return []
    now = time.time() if now is None else now
    deleted = []
    for key in services.artifacts.keys("exports/"):
        export_id = key.rsplit("/", 1)[-1].removesuffix(".json")
        if not (key.endswith(".json") and EXPORT_ID.match(export_id)):
            continue
        record = _read_record(services, export_id)
        if record is not None and _expired(services, record, now):
            delete_export(services, record)
            deleted.append(export_id)
    work = get_settings().home / "exports"
    if work.is_dir():
        for leftover in work.glob(".exp-*"):
            # An export in progress has a young folder; one older than the TTL is no export.
            if now - leftover.stat().st_mtime >= _ttl_seconds():
                shutil.rmtree(leftover, ignore_errors=True)
    return deleted

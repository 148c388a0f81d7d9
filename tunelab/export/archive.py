"""Exports made by the server: the export folder packed as one tar file in the artifact store,
under an id the server made (``exp-`` + 16 hex digits), so a download names the id and never a
path. A small JSON record beside it says what it holds."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.bundle import sha256_file
from tunelab.config import get_settings
from tunelab.export import export_model

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


def create_export(services, ref: str, fmt: str, quantization: str | None) -> ExportRecord:
    """Export ``ref`` as ``fmt``, pack it as ``<model>-v<version>-<format>.tar`` (a folder of
    that name inside), store it, and return its record."""
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
        )
        meta = tmp / "record.json"
        meta.write_text(json.dumps(asdict(record)))
        services.artifacts.put_file(meta, f"exports/{export_id}.json")
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def get_export(services, export_id: str) -> tuple[ExportRecord, Path]:
    """The record of an export and a local path to its tar file."""
    if not EXPORT_ID.match(export_id):
        raise ExportNotFound(f"{export_id!r} is not an export id (exp- and 16 hex digits)")
    try:
        meta = services.artifacts.local_path(services.artifacts.uri(f"exports/{export_id}.json"))
        record = ExportRecord(**json.loads(Path(meta).read_text()))
    except (FileNotFoundError, OSError):
        raise ExportNotFound(f"no export {export_id}") from None
    return record, services.artifacts.local_path(record.uri)

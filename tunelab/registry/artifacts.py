"""The artifact store (Vertex's working directory): a local folder by default, any fsspec URL
(s3://, gs://, memory://, …) otherwise. Keys are built from ids the system made; nothing a
user typed ever becomes part of a path.

Folders (adapter bundles, evaluation reports) are stored as a tree of files; their sha256 is
that of a listing of ``relative path + file sha256`` lines, so it does not depend on mtimes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fsspec

from tunelab.bundle import sha256_file
from tunelab.config import get_settings
from tunelab.registry.artifact_cache import ArtifactCache
from tunelab.training.atomic import fsync_tree

SAFE_KEY = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")


@dataclass(frozen=True)
class StoredArtifact:
    uri: str
    sha256: str
    size_bytes: int


def tree_sha256(folder: Path) -> str:
    lines = [
        f"{p.relative_to(folder).as_posix()} {sha256_file(p)}"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class ArtifactStore:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.is_local = "file" in protocols

    def _path(self, key: str) -> str:
        if not SAFE_KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"artifact key {key!r} is not a system-made key")
        return f"{self.root}/{key}"

    def uri(self, key: str) -> str:
        path = self._path(key)
        return path if self.is_local else f"{self.fs.unstrip_protocol(path)}"

    def put_file(self, local: Path, key: str) -> StoredArtifact:
        target = self._path(key)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=Path(target).parent, prefix=".upload-")
            os.close(fd)
            shutil.copyfile(local, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        else:
            self.fs.put_file(str(local), target)
        return StoredArtifact(self.uri(key), sha256_file(local), local.stat().st_size)

    def put_dir(self, local: Path, key: str) -> StoredArtifact:
        target = self._path(key)
        digest = tree_sha256(local)
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        if self.is_local:
            dest = Path(target)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".upload-"))
            shutil.copytree(local, tmp, dirs_exist_ok=True)
            fsync_tree(tmp)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        else:
            self.fs.put(str(local), target, recursive=True)
        return StoredArtifact(self.uri(key), digest, size)

    def local_path(self, uri: str) -> Path:
        """A local path to read the artifact from: itself when local, else a cached download
        (kept under ``TUNELAB_ARTIFACT_CACHE_GB``, least recently used pruned first:
        tunelab.registry.artifact_cache)."""
        if self.is_local:
            return Path(uri)
        return _cache().fetch(
            self._cache_path(uri), lambda dest: self.fs.get(uri, dest, recursive=True)
        )

    @staticmethod
    def _cache_path(uri: str) -> Path:
        return _cache().root / hashlib.sha256(uri.encode()).hexdigest()[:24]

    def read_text(self, uri: str) -> str:
        """A small artifact's text, read without keeping a cached copy."""
        if self.is_local:
            return Path(uri).read_text(encoding="utf-8")
        return self.fs.cat_file(uri).decode("utf-8")

    def keys(self, prefix: str) -> list[str]:
        """The keys of the files directly under the folder key ``prefix`` (``exports/``)."""
        folder = self._path(prefix.rstrip("/"))
        try:
            found = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        base = prefix.rstrip("/") + "/"
        return sorted(
            base + str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            for e in found
            if e.get("type") == "file"
        )

    def modified(self, uri: str) -> float | None:
        """Unix time the artifact was last written, where the store says (None otherwise)."""
        try:
            if self.is_local:
                return Path(uri).stat().st_mtime
            return self.fs.modified(uri).timestamp()
        except (FileNotFoundError, NotImplementedError, OSError):
            return None

    def delete(self, uri: str) -> None:
        if self.is_local:
            path = Path(uri)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        else:
            if self.fs.exists(uri):
                self.fs.rm(uri, recursive=True)
            _cache().discard(self._cache_path(uri))  # local_path's download goes with it


def _cache() -> ArtifactCache:
    settings = get_settings()
    cap = settings.artifact_cache_gb
    return ArtifactCache(settings.home / "artifact-cache", int(cap * 1e9) if cap else None)


def open_artifact_store(url: str | None = None) -> ArtifactStore:
    return ArtifactStore(url or get_settings().artifacts_url)

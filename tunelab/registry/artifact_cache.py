"""The local cache of a remote artifact store's downloads (``$TUNELAB_HOME/artifact-cache``),
kept under a size cap (``TUNELAB_ARTIFACT_CACHE_GB``, default 20; 0: no cap).

An adapter, dataset or export is fetched from s3:// (or any fsspec URL) once and read from
disk after that; without a bound the folder only grew. Each entry's modification time is its
last use (touched on every hit), and after each download the least recently used entries are
removed until the cache fits its cap again. What is never removed:

* an entry used in the last :data:`IN_USE_SECONDS`: ``local_path`` hands out a path, and a
  job step, an export download or an adapter load reads it soon after, so a recent use means
  it may be being read (the cap is exceeded rather than a reader broken);
* a download in progress: it is written under a ``.partial-`` name and renamed into place whole,
  so an entry is never seen half-written, and the pruner only clears partials a crash left
  (older than :data:`STALE_PARTIAL_SECONDS`).

A use (the check-and-touch) and a prune hold one lock on the folder, shared and exclusive, so a
prune never removes an entry between another process finding it and touching it. A removed
entry is renamed to a ``.trash-`` name first (atomic), then deleted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

IN_USE_SECONDS = 3600.0
"""An entry used this recently is never pruned (someone may be reading it)."""
STALE_PARTIAL_SECONDS = 24 * 3600.0
"""A ``.partial-`` download older than this was left by a crash and is cleared."""


class ArtifactCache:
    def __init__(self, root: Path, cap_bytes: int | None) -> None:
        self.root = root
        self.cap_bytes = cap_bytes
        """Total size the cache is pruned to after a download (None: no cap)."""

    @contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, mode)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def fetch(self, entry: Path, download: Callable[[str], None]) -> Path:
        """``entry`` (a name directly under the cache), downloaded by ``download(dest)`` the first
        time; every call marks it used."""
        with self._locked(fcntl.LOCK_SH):
            if entry.exists():
                os.utime(entry)
                return entry
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".partial-"))
        try:
            download(str(tmp / "x"))
            with self._locked(fcntl.LOCK_SH):
                try:
                    os.replace(tmp / "x", entry)
                except OSError:
                    if not entry.exists():  # not another process's identical download
                        raise
                os.utime(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.prune()
        return entry

    def discard(self, entry: Path) -> None:
        """Remove an entry (its artifact was deleted from the store)."""
        with self._locked(fcntl.LOCK_EX):
            self._remove(entry)

    def prune(self) -> int:
        """Remove least recently used entries, not used in the last IN_USE_SECONDS, until the
        cache fits its cap; clear crashed downloads. Returns the bytes freed."""
        now = time.time()
        freed = 0
        with self._locked(fcntl.LOCK_EX):
            entries = []
            for path in self.root.iterdir():
                if path.name.startswith(".trash-"):
                    self._remove(path)
                elif path.name.startswith(".partial-"):
                    if now - _mtime(path) > STALE_PARTIAL_SECONDS:
                        self._remove(path)
                elif not path.name.startswith("."):
                    entries.append((_mtime(path), _size(path), path))
            total = sum(size for _, size, _ in entries)
            if self.cap_bytes is None or total <= self.cap_bytes:
                return 0
            for used, size, path in sorted(entries, key=lambda e: e[0]):
                if total <= self.cap_bytes:
                    break
                if now - used < IN_USE_SECONDS:
                    continue
                self._remove(path)
                total -= size
                freed += size
            if total > self.cap_bytes:
                log.warning(
                    "artifact cache %s holds %d bytes, over its cap of %d: the rest was used "
                    "in the last %d s and may be being read",
                    self.root,
                    total,
                    self.cap_bytes,
                    IN_USE_SECONDS,
                )
        if freed:
            log.info("artifact cache %s: pruned %d bytes", self.root, freed)
        return freed

    def _remove(self, path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, trash)
        except FileNotFoundError:
            return
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total

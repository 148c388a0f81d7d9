"""The local cache of a remote store's downloads stays under TUNELAB_ARTIFACT_CACHE_GB, pruning
the least recently used entries first, never one used within the last hour (it may be being
read) nor a download still being written."""

import os
import time
import uuid

import pytest

from tunelab.config import get_settings
from tunelab.registry import artifact_cache
from tunelab.registry.artifacts import ArtifactStore


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(f"memory://cache-test-{uuid.uuid4().hex[:8]}")


def _put(store, tmp_path, key, size=1000):
    src = tmp_path / key.replace("/", "_")
    src.write_bytes(key.encode().ljust(size, b"."))
    return store.put_file(src, key).uri


def _age(path, hours):
    """Mark an entry as last used ``hours`` ago."""
    stamp = time.time() - hours * 3600
    os.utime(path, (stamp, stamp))


def _cache_entries():
    root = get_settings().home / "artifact-cache"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_the_least_recently_used_entries_go_first_down_to_the_cap(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_ARTIFACT_CACHE_GB", "0.0000025")  # 2500 bytes: two entries fit
    a, b, c, d = (_put(store, tmp_path, f"datasets/{k}.jsonl") for k in "abcd")
    paths = {uri: store.local_path(uri) for uri in (a, b, c)}  # 3000 bytes: over, all in use
    assert len(_cache_entries()) == 3
    _age(paths[a], 5)
    _age(paths[b], 4)
    _age(paths[c], 3)
    assert store.local_path(a) == paths[a]  # a hit marks it used now
    store.local_path(d)  # 4000 bytes: b, then c (least recently used) go; 2000 fit
    assert not paths[b].exists() and not paths[c].exists()
    assert paths[a].read_bytes().startswith(b"datasets/a.jsonl")
    assert len(_cache_entries()) == 2
    # A pruned entry is fetched again, whole, when next asked for.
    assert store.local_path(b).read_bytes() == b"datasets/b.jsonl".ljust(1000, b".")


def test_entries_used_within_the_hour_are_kept_even_over_the_cap(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_ARTIFACT_CACHE_GB", "0.0000015")
    uris = [_put(store, tmp_path, f"adapters/{k}") for k in "xyz"]
    paths = [store.local_path(u) for u in uris]
    _age(paths[0], 2)
    _age(paths[1], artifact_cache.IN_USE_SECONDS / 3600 - 0.25)  # used 45 min ago: maybe in use
    store.local_path(_put(store, tmp_path, "adapters/w"))
    assert not paths[0].exists()
    assert paths[1].exists() and paths[2].exists()


def test_a_folder_artifact_counts_its_files_and_goes_whole(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_ARTIFACT_CACHE_GB", "0.000003")
    bundle = tmp_path / "bundle"
    (bundle / "sub").mkdir(parents=True)
    (bundle / "adapter_model.safetensors").write_bytes(b"w" * 1500)
    (bundle / "sub" / "tokenizer.json").write_bytes(b"t" * 1000)
    folder = store.local_path(store.put_dir(bundle, "adapters/v1").uri)
    assert (folder / "sub" / "tokenizer.json").read_bytes() == b"t" * 1000
    _age(folder, 2)
    single = store.local_path(_put(store, tmp_path, "datasets/one.jsonl"))
    assert not folder.exists() and single.exists()  # 2500 + 1000 > 3000: the folder went


def test_no_cap_keeps_everything(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_ARTIFACT_CACHE_GB", "0")
    paths = [store.local_path(_put(store, tmp_path, f"datasets/{k}", 10_000)) for k in "pqr"]
    for p in paths:
        _age(p, 100)
    store.local_path(_put(store, tmp_path, "datasets/s"))
    assert all(p.exists() for p in paths)


def test_downloads_in_progress_are_never_seen_or_pruned(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_ARTIFACT_CACHE_GB", "0.000001")
    root = get_settings().home / "artifact-cache"
    root.mkdir(parents=True)
    writing = root / ".partial-writing"
    writing.mkdir()
    crashed = root / ".partial-crashed"
    crashed.mkdir()
    _age(crashed, artifact_cache.STALE_PARTIAL_SECONDS / 3600 + 1)
    uri = _put(store, tmp_path, "datasets/big.jsonl")

    entry = store._cache_path(uri)
    seen = []

    def failing_get(uri, dest, **kwargs):
        seen.append((entry.exists(), os.path.basename(os.path.dirname(dest))))
        raise ConnectionError("network down")

    original = store.fs.get
    monkeypatch.setattr(store.fs, "get", failing_get)
    with pytest.raises(ConnectionError):
        store.local_path(uri)
    # Written under a .partial- name, never at the entry's own; gone with the failure.
    assert seen[0][0] is False and seen[0][1].startswith(".partial-")
    assert _cache_entries() == [] and not (root / seen[0][1]).exists()
    monkeypatch.setattr(store.fs, "get", original)
    store.local_path(uri)
    assert writing.exists()  # another process's download, still being written
    assert not crashed.exists()  # left by a crash a day ago
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".partial-")) == [
        ".partial-writing"
    ]


def test_deleting_an_artifact_drops_its_cached_copy(store, tmp_path):
    uri = _put(store, tmp_path, "datasets/gone.jsonl")
    cached = store.local_path(uri)
    store.delete(uri)
    assert not cached.exists() and _cache_entries() == []


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "inf"])
def test_a_bad_cap_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("TUNELAB_ARTIFACT_CACHE_GB", value)
    with pytest.raises(ValueError, match="TUNELAB_ARTIFACT_CACHE_GB"):
        get_settings()

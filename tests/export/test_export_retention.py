"""Export archives the server made are not kept forever (they piled up in the artifact store):
``TUNELAB_EXPORT_TTL_HOURS`` after an export is made it is deleted, a download of it says it
expired, and the sweep runs whenever an export is made or downloaded, also removing the working
folders a killed export left behind. 0 keeps them."""

import os
import time

import httpx
import pytest
from support import LiveServer

from tunelab.config import get_settings
from tunelab.export.archive import ExportNotFound, create_export, get_export, prune_exports

TTL_HOURS = 1.5 / 3600  # 1.5 seconds


def _stored(services) -> set[str]:
    return set(services.artifacts.keys("exports/"))


def _files(record) -> set[str]:
    return {f"exports/{record.id}.tar", f"exports/{record.id}.json"}


@pytest.fixture
def short_ttl(monkeypatch):
    monkeypatch.setenv("TUNELAB_EXPORT_TTL_HOURS", str(TTL_HOURS))


def test_an_export_expires_and_its_download_says_so(tuned, short_ttl):
    from tunelab.api.app import create_app
    from tunelab.auth import create_key

    services, _ = tuned
    key = create_key(services.db, "retention").secret
    with (
        LiveServer(create_app(services)) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        made = http.post("/v1/tunedModels/colors:export", json={"format": "peft"}).json()
        assert made["expires_at"] == pytest.approx(made["created_at"] + 1.5)
        assert http.get(made["download_url"]).status_code == 200  # within its time
        assert {f"exports/{made['id']}.tar", f"exports/{made['id']}.json"} <= _stored(services)
        time.sleep(1.6)
        gone = http.get(made["download_url"])
        assert gone.status_code == 404
        assert "expired" in gone.json()["error"]["message"]
        assert "export the model again" in gone.json()["error"]["message"]
    assert not any(made["id"] in k for k in _stored(services))  # the archive is deleted


def test_making_an_export_sweeps_the_expired_ones_and_dead_work_folders(tuned, short_ttl):
    services, _ = tuned
    old = create_export(services, "colors", "peft", None)
    dead = get_settings().home / "exports" / ".exp-0123456789abcdef-x"  # a killed export's
    dead.mkdir(parents=True)
    (dead / "part.bin").write_bytes(b"x")
    long_ago = time.time() - 3600
    os.utime(dead, (long_ago, long_ago))
    time.sleep(1.6)
    new = create_export(services, "colors", "peft", None)
    stored = _stored(services)
    assert _files(new) <= stored and not _files(old) & stored
    assert not dead.exists()
    with pytest.raises(ExportNotFound, match="no export"):
        get_export(services, old.id)
    record, path = get_export(services, new.id)  # a young one stays downloadable
    assert record.id == new.id and path.is_file()


def test_an_export_from_before_expiry_is_aged_by_its_record_file(tuned, short_ttl):
    import json

    services, _ = tuned
    made = create_export(services, "colors", "peft", None)
    meta = services.artifacts.local_path(services.artifacts.uri(f"exports/{made.id}.json"))
    record = json.loads(meta.read_text())
    for field in ("created_at", "expires_at"):  # as written before exports expired
        del record[field]
    meta.write_text(json.dumps(record))
    assert get_export(services, made.id)[0].created_at is None  # young: still served
    long_ago = time.time() - 3600
    os.utime(meta, (long_ago, long_ago))
    assert made.id in prune_exports(services)
    assert not _files(made) & _stored(services)


def test_ttl_zero_keeps_exports_and_a_bad_value_is_refused_by_name(tuned, monkeypatch):
    services, _ = tuned
    monkeypatch.setenv("TUNELAB_EXPORT_TTL_HOURS", "0")
    made = create_export(services, "colors", "peft", None)
    assert made.expires_at is None
    assert prune_exports(services, now=time.time() + 10 * 365 * 86400) == []
    assert get_export(services, made.id)[0].id == made.id
    for bad in ("a day", "-1", "inf", "nan"):
        monkeypatch.setenv("TUNELAB_EXPORT_TTL_HOURS", bad)
        with pytest.raises(ValueError, match="TUNELAB_EXPORT_TTL_HOURS"):
            get_settings()

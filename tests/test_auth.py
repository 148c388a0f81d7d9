"""API keys: scopes (existing keys become admin when the database is upgraded) and the
throttled record of when a key was last used."""

import pytest
import sqlalchemy as sa

from tunelab import auth


def test_keys_made_before_scopes_become_admin_on_upgrade(db_url):
    """A database at revision 0002 (keys without scopes) keeps its keys working, as admin."""
    from alembic import command
    from alembic.config import Config

    from tunelab.db.engine import MIGRATIONS, _make_engine, open_database

    engine = _make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    old = auth.CreatedKey(id="0123456789ab", name="old", secret="tl-0123456789ab.s3cret")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (id, name, secret_sha256, created_at) "
                "VALUES (:id, :name, :sha, CURRENT_TIMESTAMP)"
            ),
            {"id": old.id, "name": old.name, "sha": auth._hash(old.secret)},
        )
    engine.dispose()

    db = open_database(db_url)  # migrates to head
    key = auth.verify_key(db, old.secret)
    assert key is not None and key.scope == "admin"
    assert auth.create_key(db, "new").scope == "admin"
    narrow = auth.create_key(db, "app", "inference")
    assert auth.verify_key(db, narrow.secret).scope == "inference"


def test_an_unknown_scope_is_refused(services):
    with pytest.raises(ValueError, match="unknown scope 'root'.*inference, tune, admin"):
        auth.create_key(services.db, "x", "root")
    assert auth.list_keys(services.db) == []


def test_each_scope_holds_the_lesser_ones():
    assert auth.scopes_granted("inference") == ("inference",)
    assert auth.scopes_granted("tune") == ("inference", "tune")
    assert auth.allows("admin", "tune") and not auth.allows("tune", "admin")
    assert not auth.allows("bogus", "inference")


def test_last_used_is_written_at_most_once_per_interval(services):
    db = services.db
    key = auth.verify_key(db, auth.create_key(db, "k").secret)
    recorder = auth.UsageRecorder(db, interval=60)

    def last_used():
        return next(k.last_used_at for k in auth.list_keys(db) if k.id == key.id)

    recorder.used(key)
    first = last_used()
    assert first is not None
    with db.session() as s:  # forget it, to see whether the next uses write again
        s.execute(sa.update(auth.ApiKey).values(last_used_at=None))
    for _ in range(50):
        recorder.used(key)
    assert last_used() is None  # within the minute: no writes

    recorder.interval = 0
    recorder.used(key)
    assert last_used() is not None

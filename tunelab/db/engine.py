"""Opening the database: SQLite tuned for many processes, or any SQLAlchemy URL (PostgreSQL).

SQLite settings, and why:
- WAL journal: readers never block the writer and the writer never blocks readers.
- ``synchronous=FULL``: a committed job state survives power loss, not just a process crash.
- ``busy_timeout``: a writer waits for the lock instead of failing with "database is locked".
- ``BEGIN IMMEDIATE``: every transaction takes the write lock at its start. With Python's
  default deferred transactions, two connections that both read and then write deadlock on the
  lock upgrade, and SQLite fails one of them at once *without* honouring busy_timeout: the
  "database is locked" errors under concurrent submissions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 60_000
MIGRATIONS = Path(__file__).with_name("migrations")

_open: dict[str, Database] = {}
_open_lock = threading.Lock()


@dataclass
class Database:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self.sessions() as session, session.begin():
            yield session


def open_database(url: str, migrate: bool = True) -> Database:
    """The database at ``url``, migrated to the current schema; one engine per URL per process."""
    with _open_lock:
        if url in _open:
            return _open[url]
        engine = _make_engine(url)
        if migrate:
            upgrade(engine)
        db = Database(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
        _open[url] = db
        return db


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> None:
    """Apply Alembic migrations up to head (idempotent; concurrent openers serialise on the DB)."""
    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration is noise
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise concurrent first opens; SQLite does this through BEGIN IMMEDIATE.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7361221)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

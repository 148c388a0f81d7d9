"""Persistence: SQLAlchemy 2 on SQLite (embedded default) or PostgreSQL (by URL), with Alembic
migrations applied when a database is opened."""

from tunelab.db.engine import Database, open_database

__all__ = ["Database", "open_database"]

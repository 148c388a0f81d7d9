"""Alembic environment: migrations run on the connection tunelab.db.engine.upgrade passes in,
or, from the alembic CLI, on TUNELAB_DATABASE_URL."""

from alembic import context
from sqlalchemy import create_engine

from tunelab.config import get_settings
from tunelab.db.schema import Base

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        with create_engine(get_settings().database_url).begin() as conn:
            _migrate(conn)
    else:
        _migrate(connection)


def _migrate(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
    )
    context.run_migrations()


run()

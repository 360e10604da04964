"""Alembic environment for the trainer's tables: run by `charter.trainer.store.migrate` on a
connection it passes in, or by the `alembic` command with `-x url=...`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from charter.trainer.schema import VERSION_TABLE, metadata

config = context.config
connection = config.attributes.get("connection")


def _run(conn: Connection) -> None:
    context.configure(
        connection=conn, target_metadata=metadata, render_as_batch=True, version_table=VERSION_TABLE
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no database: pass `-x url=...` or set sqlalchemy.url")
    with create_engine(url).connect() as connection:
        _run(connection)
else:
    _run(connection)

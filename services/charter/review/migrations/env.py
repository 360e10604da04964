"""Alembic environment: run by `charter.review.store.migrate` on a connection it passes in, or by the
`alembic` command with `-x url=...`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from charter.review.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no database: pass `-x url=...` or set sqlalchemy.url")
    with create_engine(url).connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()

"""`charter review …`: operate the review ledger without the service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charter.core.settings import load_settings

app = typer.Typer(help="Operate the review ledger (database migrations).", no_args_is_help=True)


@app.command()
def migrate(
    database: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of the ledger (default: review.database_url).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Create or upgrade the ledger's schema to the newest migration (the service also does this
    when it starts); safe to run while replicas start."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from charter.core.db import normalise_url
    from charter.review.store import migrate as upgrade

    url = normalise_url(database or load_settings(config).review.database_url.get_secret_value())
    engine = create_engine(url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    typer.echo(f"{make_url(url).render_as_string(hide_password=True)}: at revision {revision}")

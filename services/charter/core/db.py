"""Database plumbing shared by the review ledger and the trainer's run store: SQLAlchemy engines
for SQLite (the embedded default) and PostgreSQL (psycopg 3), alembic migrations run at start-up, and
the dialect-specific statements the stores share (a one-statement multi-row INSERT on PostgreSQL,
INSERT … ON CONFLICT DO NOTHING on both).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, text
from sqlalchemy.engine import make_url


def normalise_url(url: str) -> str:
    """`postgresql://…` (what operators write) runs on psycopg 3; SQLite paths get their folder made."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return parsed.render_as_string(hide_password=False)


def sqlite_setup(engine: Engine, begin: str) -> None:
    """pysqlite's own transaction handling is bypassed: writers BEGIN IMMEDIATE (take the write lock up
    front, so two writers never deadlock upgrading read locks), readers BEGIN; WAL lets readers go on
    while a writer works."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


class Engines:
    """A writer engine, a reader engine and, on SQLite, the in-process writer lock.

    SQLite: writers of this process queue on a lock instead of in SQLite's busy handler, which sleeps
    in growing steps (it gave ledger claims a p99 of over a second under 20 reviewers)."""

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        url = normalise_url(url)
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self.writer_lock: Any = None
        if self.dialect == "sqlite":
            args = {"check_same_thread": False, "timeout": 30}
            self.engine = create_engine(url, connect_args=args)
            sqlite_setup(self.engine, "BEGIN IMMEDIATE")
            self.reader = create_engine(url, connect_args=args)
            sqlite_setup(self.reader, "BEGIN")
            self.writer_lock = threading.Lock()
        else:
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
            self.reader = self.engine

    def dispose(self) -> None:
        self.engine.dispose()
        self.reader.dispose()


def unavailable(exc: BaseException) -> bool:
    """The database cannot be reached or has gone away (connection refused or lost, the server
    restarting or refusing connections, the pool exhausted, SQLite locked): a retry may succeed.
    Constraint violations and SQL errors are not this."""
    from sqlalchemy import exc as errors

    transient = (
        errors.OperationalError,
        errors.InterfaceError,
        errors.DisconnectionError,
        errors.TimeoutError,
    )
    return isinstance(exc, transient)


def ping(engine: Engine) -> None:
    """One round trip to the database (`SELECT 1`); raises when it cannot be reached."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def answers(ping: Awaitable[None], log: Any, event: str) -> bool:
    """A service's health probe: whether `ping` (a database round trip off the event loop) succeeds;
    a failure is logged as `event` (the driver's message, shortened) and means NOT_SERVING."""
    try:
        await ping
    except Exception as err:  # any failure to reach it: NOT_SERVING until it answers again
        log.warning(event, error=str(getattr(err, "orig", err)).strip()[:200])
        return False
    return True


def migrate(engine: Engine, script_location: Path, *, lock_key: int) -> None:
    """Bring the database to the newest schema of the alembic scripts at `script_location` (`upgrade
    head`); safe with several replicas starting at once on PostgreSQL (an advisory lock on `lock_key`
    makes them take turns)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def pg_insert_unnest(
    table: Table, rows: list[dict[str, Any]], *, conflict: str = "", returning: tuple[str, ...] = ()
) -> tuple[Any, dict[str, list[Any]]]:
    """A multi-row INSERT on PostgreSQL as `INSERT ... SELECT * FROM unnest(<one array per column>)`:
    one short statement with one parameter per column, however many rows; returns (statement,
    parameters). (An executemany of 1,000 rows renders a 13,000-placeholder VALUES list that psycopg
    re-parses in Python on every call: it caches only statements under 4 KB and 50 parameters.)
    `conflict` names a unique column whose clashes are skipped; `returning` the columns returned."""
    columns = tuple(rows[0])
    return _pg_unnest_sql(table, columns, conflict, returning), {c: [r[c] for r in rows] for c in columns}


@functools.cache
def _pg_unnest_sql(table: Table, columns: tuple[str, ...], conflict: str, returning: tuple[str, ...]) -> Any:
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves its __init__ unannotated
    arrays = ", ".join(f"CAST(:{c} AS {table.c[c].type.compile(dialect=dialect)}[])" for c in columns)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
    if conflict:
        sql += f" ON CONFLICT ({conflict}) DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    return text(sql)


def insert_ignore(conn: Connection, table: Table, key: str) -> Any:
    """`INSERT … ON CONFLICT (key) DO NOTHING` in the connection's dialect (SQLite or PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=[key])
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])

"""The trainer's tables (SQLAlchemy 2 Core); changes go through a new alembic migration in
`migrations/versions/` (`tests/integration/test_trainer_store.py` checks the two agree).

- `runs`: one row per run; `payload` is the serialised `charter.trainer.v1.Run` (spec, state, cursor
  range, last metrics, checkpoint), the other columns are what queries and the follower need:
  `handle` (the executor's name for the current worker), `attempt` (1 + resumes), `events_seen`
  (worker events of this attempt already recorded, so a restarted service skips them) and
  `event_nonce` (the nonce the attempt's event lines carry, drawn when it is claimed; NULL for a run
  claimed before nonces existed, followed by the bare prefix).
- `run_events`: every event of every run, append-only, numbered per run from 1.
- `run_rounds`: the rounds continuous runs published, one row per (run, round): the cursor range each
  trained on and its model folder (`skipped` is JSON: reason -> count). Written in the transaction
  that records the round's event, at most once per round.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()
VERSION_TABLE = "charter_trainer_alembic_version"
"""Alembic's version table for these migrations (the review ledger may share the database)."""

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("state", SmallInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("idempotency_key", String(256), nullable=True, unique=True),
    Column("executor", String(32), nullable=False),
    Column("handle", String(512), nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("events_seen", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("event_nonce", String(64), nullable=True),
    Index("ix_runs_state", "state"),
    Index("ix_runs_created", "created_at", "id"),
)

run_events = Table(
    "run_events",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("payload", LargeBinary, nullable=False),
)

run_rounds = Table(
    "run_rounds",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("round", Integer, primary_key=True, autoincrement=False),
    Column("cursor_start", BigInteger, nullable=False),
    Column("cursor_end", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("labels_read", BigInteger, nullable=False),
    Column("skipped", Text, nullable=False),
    Column("model_dir", String(1024), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("published_at", Float, nullable=False),
)

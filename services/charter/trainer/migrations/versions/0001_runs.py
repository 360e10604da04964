"""The trainer's runs and their events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=True, unique=True),
        sa.Column("executor", sa.String(32), nullable=False),
        sa.Column("handle", sa.String(512), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("events_seen", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_index("ix_runs_created", "runs", ["created_at", "id"])
    op.create_table(
        "run_events",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_events")
    op.drop_index("ix_runs_created", "runs")
    op.drop_index("ix_runs_state", "runs")
    op.drop_table("runs")

"""The rounds continuous runs publish (cursor range and model folder per round).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_rounds",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("round", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("cursor_start", sa.BigInteger, nullable=False),
        sa.Column("cursor_end", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("labels_read", sa.BigInteger, nullable=False),
        sa.Column("skipped", sa.Text, nullable=False),
        sa.Column("model_dir", sa.String(1024), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("published_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_rounds")

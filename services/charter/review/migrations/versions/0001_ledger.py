"""The label ledger: labels, review slots, decisions, closed items, the accepted stream.

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

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "labels",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("label_id", sa.String(128), nullable=False, unique=True),
        sa.Column("constitution_id", sa.String(64), nullable=False),
        sa.Column("principle_id", sa.String(64), nullable=False),
        sa.Column("p_a", sa.Float, nullable=False),
        sa.Column("choice", sa.SmallInteger, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("swap_consistent", sa.Boolean, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("route", sa.SmallInteger, nullable=False),
        sa.Column("reason", sa.SmallInteger, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "review_slots",
        sa.Column("slot_id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.String(128), sa.ForeignKey("labels.label_id"), nullable=False),
        sa.Column("label_seq", sa.BigInteger, nullable=False),
        sa.Column("constitution_id", sa.String(64), nullable=False),
        sa.Column("priority", sa.Float, nullable=False),
        sa.Column("reason", sa.SmallInteger, nullable=False),
        sa.Column("needed", sa.SmallInteger, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("lease_id", sa.String(64), nullable=True),
        sa.Column("reviewer", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
    )
    op.create_index("ix_review_slots_queue", "review_slots", ["done", sa.text("priority DESC"), "label_seq"])
    op.create_index("ix_review_slots_item", "review_slots", ["item_id"])
    op.create_table(
        "decisions",
        sa.Column("decision_id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.String(128), sa.ForeignKey("labels.label_id"), nullable=False),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("choice", sa.SmallInteger, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("lease_id", sa.String(64), nullable=False, unique=True),
        sa.Column("decided_at", sa.Float, nullable=False),
    )
    op.create_index("ix_decisions_item", "decisions", ["item_id"])
    op.create_table(
        "items_closed",
        sa.Column("item_id", sa.String(128), sa.ForeignKey("labels.label_id"), primary_key=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("closed_at", sa.Float, nullable=False),
    )
    op.create_table(
        "accepted",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("label_id", sa.String(128), sa.ForeignKey("labels.label_id"), nullable=False, unique=True),
        sa.Column("label_seq", sa.BigInteger, nullable=False),
        sa.Column("constitution_id", sa.String(64), nullable=False),
        sa.Column("source", sa.SmallInteger, nullable=False),
        sa.Column("p_a", sa.Float, nullable=False),
        sa.Column("choice", sa.SmallInteger, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("accepted_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("accepted", "items_closed", "decisions", "review_slots", "labels"):
        op.drop_table(table)

"""Indexes for claims on a deep queue: slots by (item, done) — without it SQLite answers "this item's
open slots" from ix_review_slots_queue, reading every open slot — and a reviewer's held slots and
decisions (the claim's two NOT EXISTS checks), which were sequential scans.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_review_slots_item", table_name="review_slots")
    op.create_index("ix_review_slots_item", "review_slots", ["item_id", "done"])
    op.create_index("ix_review_slots_reviewer", "review_slots", ["reviewer", "item_id"])
    op.create_index("ix_decisions_reviewer", "decisions", ["reviewer", "item_id"])


def downgrade() -> None:
    op.drop_index("ix_decisions_reviewer", table_name="decisions")
    op.drop_index("ix_review_slots_reviewer", table_name="review_slots")
    op.drop_index("ix_review_slots_item", table_name="review_slots")
    op.create_index("ix_review_slots_item", "review_slots", ["item_id"])

"""Each run's event nonce: the random value its current attempt's worker puts in its event lines
(`charter.trainer.events`), kept so a restarted service can follow a worker it adopts. NULL for a run
claimed before this revision: its worker prints the bare prefix, which is all it is followed by.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("event_nonce", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("event_nonce")

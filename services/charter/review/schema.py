"""The ledger's tables (SQLAlchemy 2 Core). Changes go through a new alembic migration in
`migrations/versions/`; `tests/unit/test_review_store.py` checks the two agree.

- `labels`: every submitted label, append-only; `seq` is its ledger sequence number, `label_id` its
  content-derived key (a resubmission is a no-op), `payload` the serialised PreferenceLabel.
- `review_slots`: one row per wanted human decision (k rows with overlap k), carrying the lease.
- `decisions`: every human decision, append-only (skips included).
- `web_sessions`: the review page's sign-ins: the SHA-256 of the session id the cookie holds (never
  the id itself), the digest of the token that signed in (so replacing a token ends its sessions),
  expiry and revocation (sign-out).
- `accepted`: the accepted-label stream; `seq` is the stream cursor. Rows are appended in commit
  order (one writer at a time), so a reader that saw sequence n never later finds a smaller one.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY
Sequence_ = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

labels = Table(
    "labels",
    metadata,
    Column("seq", Sequence_, primary_key=True, autoincrement=True),
    Column("label_id", String(128), nullable=False, unique=True),
    Column("constitution_id", String(64), nullable=False),
    Column("principle_id", String(64), nullable=False),
    Column("p_a", Float, nullable=False),
    Column("choice", SmallInteger, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("swap_consistent", Boolean, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("route", SmallInteger, nullable=False),
    Column("reason", SmallInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

review_slots = Table(
    "review_slots",
    metadata,
    Column("slot_id", Sequence_, primary_key=True, autoincrement=True),
    Column("item_id", String(128), ForeignKey("labels.label_id"), nullable=False),
    Column("label_seq", BigInteger, nullable=False),
    Column("constitution_id", String(64), nullable=False),
    Column("priority", Float, nullable=False),
    Column("reason", SmallInteger, nullable=False),
    Column("needed", SmallInteger, nullable=False),
    Column("done", Boolean, nullable=False, default=False),
    Column("lease_id", String(64), nullable=True),
    Column("reviewer", String(64), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
)
Index("ix_review_slots_queue", review_slots.c.done, review_slots.c.priority.desc(), review_slots.c.label_seq)
Index("ix_review_slots_item", review_slots.c.item_id, review_slots.c.done)
Index("ix_review_slots_reviewer", review_slots.c.reviewer, review_slots.c.item_id)

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", Sequence_, primary_key=True, autoincrement=True),
    Column("item_id", String(128), ForeignKey("labels.label_id"), nullable=False),
    Column("reviewer", String(64), nullable=False),
    Column("choice", SmallInteger, nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("lease_id", String(64), nullable=False, unique=True),
    Column("decided_at", Float, nullable=False),
)
Index("ix_decisions_item", decisions.c.item_id)
Index("ix_decisions_reviewer", decisions.c.reviewer, decisions.c.item_id)

items_closed = Table(
    "items_closed",
    metadata,
    Column("item_id", String(128), ForeignKey("labels.label_id"), primary_key=True),
    Column("outcome", String(16), nullable=False),
    Column("closed_at", Float, nullable=False),
)

accepted = Table(
    "accepted",
    metadata,
    Column("seq", Sequence_, primary_key=True, autoincrement=True),
    Column("label_id", String(128), ForeignKey("labels.label_id"), nullable=False, unique=True),
    Column("label_seq", BigInteger, nullable=False),
    Column("constitution_id", String(64), nullable=False),
    Column("source", SmallInteger, nullable=False),
    Column("p_a", Float, nullable=False),
    Column("choice", SmallInteger, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("accepted_at", Float, nullable=False),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("token_digest", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)
Index("ix_web_sessions_expires", web_sessions.c.expires_at)

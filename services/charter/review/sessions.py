"""The review page's sign-ins, kept on the server: the cookie holds a random session id (256 bits),
the ledger's `web_sessions` table its SHA-256 — a copy of the database signs nobody in — and the
digest of the token that signed in. A session ends when it expires, when its reviewer signs out
(revoked at once, on every replica: they share the table), or when its token is removed or replaced
(the token digest no longer authenticates). Expired and revoked rows are deleted as new sessions
are created.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import TypeGuard

from sqlalchemy import delete, insert, or_, select, update

from charter.review.schema import web_sessions
from charter.review.store import Ledger

__all__ = ["Sessions"]


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _well_formed(session_id: str | None) -> TypeGuard[str]:
    """A cookie value that could be one of ours (43 characters; anything far longer is not looked up)."""
    return session_id is not None and 0 < len(session_id) <= 128


class Sessions:
    def __init__(self, ledger: Ledger, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.ledger, self.ttl_seconds, self.clock = ledger, ttl_seconds, clock

    def create(self, token_digest: bytes) -> str:
        """A new session for the token with this SHA-256 digest; returns the id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        with self.ledger.transaction() as conn:
            conn.execute(
                delete(web_sessions).where(
                    or_(web_sessions.c.expires_at <= now, web_sessions.c.revoked_at.is_not(None))
                )
            )
            conn.execute(
                insert(web_sessions).values(
                    session_hash=_hash(session_id),
                    token_digest=token_digest.hex(),
                    created_at=now,
                    expires_at=now + self.ttl_seconds,
                )
            )
        return session_id

    def token_digest(self, session_id: str | None) -> bytes | None:
        """The digest of the token behind a live session, or None (unknown, expired or revoked)."""
        if not _well_formed(session_id):
            return None
        with self.ledger.reader.connect() as conn:
            row = conn.execute(
                select(web_sessions.c.token_digest).where(
                    web_sessions.c.session_hash == _hash(session_id),
                    web_sessions.c.expires_at > self.clock(),
                    web_sessions.c.revoked_at.is_(None),
                )
            ).first()
        return bytes.fromhex(row[0]) if row else None

    def revoke(self, session_id: str | None) -> None:
        if not _well_formed(session_id):
            return
        with self.ledger.transaction() as conn:
            conn.execute(
                update(web_sessions)
                .where(web_sessions.c.session_hash == _hash(session_id))
                .values(revoked_at=self.clock())
            )

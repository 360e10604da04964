"""Wakes following label streams when the accepted stream grows.

Within one process the ledger calls `notify` after each commit that accepted labels. Across
replicas on PostgreSQL, a LISTEN connection on `charter_accepted` hears every replica's NOTIFY. On
SQLite (one file, usually one process) streams also poll every `review.poll_seconds`, so a write by
another process is seen within that interval. A waiter that races a notification never sleeps
through it: it waits on the generation it read before its last query.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy.engine import URL

from charter.review.store import NOTIFY_CHANNEL

log = structlog.get_logger("charter.review.notify")


class AcceptedSignal:
    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task[None] | None = None
        self.closing = False

    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()

    def _bump(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    def notify(self, _sequence: int = 0) -> None:
        """Thread-safe: wake every waiter."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._bump)

    def close(self) -> None:
        """Wake every waiter for good (the server is draining)."""
        self.closing = True
        self.notify()

    async def wait(self, generation: int, timeout: float) -> None:
        """Return when the generation has moved past `generation`, or after `timeout` seconds."""
        if self.generation != generation or self.closing:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()

    def listen(self, url: URL) -> None:
        """Start a LISTEN connection (PostgreSQL) that bumps the generation on every NOTIFY."""
        self._listener = asyncio.create_task(self._listen(url), name="review-listen")

    async def _listen(self, url: URL) -> None:
        import psycopg

        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        backoff = 0.5
        while not self.closing:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    log.info("review.listen.started", channel=NOTIFY_CHANNEL)
                    backoff = 0.5
                    self._bump()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self._bump()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the database went away: streams keep polling meanwhile
                log.warning("review.listen.lost", error=str(err), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def stop(self) -> None:
        self.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

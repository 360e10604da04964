"""Per-call deadlines for engine calls: a call returns at its deadline, it never hangs past it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from charter.core.errors import DeadlineExceeded

T = TypeVar("T")


def deadline_in(timeout: float | None) -> float | None:
    """The moment `timeout` seconds from now, in event-loop time (`loop.time()`); None: no deadline."""
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def time_left(deadline: float | None, floor: float = 0.0) -> float | None:
    """Seconds from now to `deadline` (event-loop time), at least `floor`; None: no deadline."""
    return None if deadline is None else max(floor, deadline - asyncio.get_running_loop().time())


def _expired(timeout: float | None) -> DeadlineExceeded:
    return DeadlineExceeded(f"inference did not finish within the {timeout:g} s deadline")


async def await_with_deadline(awaitable: Awaitable[T], timeout: float | None) -> T:
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise _expired(timeout) from None


async def as_completed_within(awaitables: Sequence[Awaitable[T]], timeout: float | None) -> AsyncIterator[T]:
    """Results in completion order; everything still pending is cancelled when the caller stops
    early, fails, or the deadline passes."""
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in awaitables]
    try:
        async with asyncio.timeout(timeout):
            for done in asyncio.as_completed(tasks):
                yield await done
    except TimeoutError:
        raise _expired(timeout) from None
    finally:
        for t in tasks:
            t.cancel()

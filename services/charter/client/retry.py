"""Retrying a call while a service is briefly unreachable, for callers that run long (pipelines,
evaluations): exponential backoff on `TRANSIENT` codes, then a clear error that says the work so far
is kept. (gRPC's own retry policy in `channel` covers connection failures before a call starts;
this covers a service that is down for seconds, e.g. restarting.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from grpc import aio

from charter.client.channel import TRANSIENT
from charter.core.errors import Unavailable

log = structlog.get_logger("charter.client")
T = TypeVar("T")


class ServiceUnavailable(Unavailable):
    """A service stayed unreachable through every retry; what a pipeline wrote is kept and the next
    run resumes."""


async def with_retry(
    call: Callable[[], Awaitable[T]], *, what: str, address: str, retries: int, backoff_seconds: float
) -> T:
    """`call()`, retried `retries` times with backoff `backoff_seconds · 2^attempt` while it fails with
    a transient code; other errors propagate at once."""
    attempts = retries + 1
    for attempt in range(attempts):
        try:
            return await call()
        except aio.AioRpcError as err:
            if err.code() not in TRANSIENT:
                raise
            if attempt == attempts - 1:
                raise ServiceUnavailable(
                    f"{what} at {address} is unavailable after {attempts} attempts ({err.code().name}: "
                    f"{err.details()}); the output so far is kept — run the same command again to resume"
                ) from None
            delay = backoff_seconds * 2**attempt
            log.warning("client.retry", service=what, address=address, attempt=attempt + 1, delay_s=delay,
                        code=err.code().name)  # fmt: skip
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")

"""What every typed client shares: a channel from `open_channel`, a deadline per call, and retrying
while the service is briefly away."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from grpc import aio

from charter.client.channel import ChannelOptions, open_channel
from charter.client.retry import with_retry

T = TypeVar("T")


class ServiceClient:
    """A client of one Charter service at `target` (`host:port`).

    `token`: a bearer token sent on every call (services with tokens configured need one);
    `timeout`: seconds each call may take (None: no deadline); `retries`/`backoff_seconds`: how long
    to keep trying while the service answers UNAVAILABLE (0: fail at once). Use as an async context
    manager, or call `close()`.
    """

    service = "a Charter service"
    """How errors name the service ("the judge")."""
    stub_type: type[Any] | None = None
    """The generated stub class; the client's `stub` is one over its channel."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff_seconds: float = 1.0,
        options: ChannelOptions | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retries, self.backoff_seconds = retries, backoff_seconds
        self.channel: aio.Channel = open_channel(target, token=token, options=options)
        self.stub: Any = self.stub_type(self.channel) if self.stub_type is not None else None

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn()` (one RPC), retried while the service is unavailable."""
        return await with_retry(
            fn, what=self.service, address=self.target, retries=self.retries,
            backoff_seconds=self.backoff_seconds,
        )  # fmt: skip

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self: Any) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

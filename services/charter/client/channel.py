"""The one way Charter opens a gRPC channel: target, bearer token, TLS or mutual TLS, message size
limits, keepalive, a load-balancing policy and a retry policy for transient failures, the last two
set through gRPC's service config.

Load balancing: a target may resolve to several addresses — a Kubernetes headless Service's name
(`dns:///charter-judge:50051`: one A record per ready pod) or a static list
(`ipv4:127.0.0.1:5001,127.0.0.1:5002`). With `round_robin` (the default, `client.load_balancing`) the
channel connects to every address and sends each call to the next ready one, so replicas share a
pipeline's load; `pick_first` sends every call over one connection (gRPC's own default). The channel
resolves the name again whenever a connection drops — a pod gone, a server closing a connection at
its `server.max_connection_age_seconds` — at most every `dns_refresh_seconds`, and so finds pods added
by a scale-up. docs/architecture.md, "Load balancing over replicas".

TLS comes from the `client` settings (`client.tls`: ca_file, cert_file/key_file for mutual TLS,
server_name) of the process — those its `load_settings` read — or from `ChannelOptions.client`. A
bearer token is never sent in plaintext to an address beyond this machine unless
`client.allow_plaintext_tokens` says so (`charter.core.tls.check_token_transport`).

Every caller in the code base (pipelines, `charter export`, the CLI, evaluations, the trainer's
worker) and users' own code get their channels here, so a change of transport (TLS, a new limit)
is made once.

Example:
    async with open_channel("judge:50051", token="...") as channel:
        stub = judge_pb2_grpc.JudgeServiceStub(channel)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import grpc
from grpc import aio

from charter.core import tls, tracing
from charter.core.settings import ClientSettings

AUTHORIZATION = "authorization"

TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
"""Codes a caller may retry: the service or its backend is busy or briefly away."""

PER_ITEM = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})
"""Codes that condemn the request's items, not the run: a pipeline records a row error and goes on."""


@dataclass(frozen=True)
class ChannelOptions:
    """How a channel behaves; the defaults suit every Charter service."""

    max_message_mb: int = 64
    """Largest message sent or received (the servers' `server.max_message_mb` default)."""
    keepalive_seconds: int = 30
    """Ping an idle connection this often, so a dead peer (or a NAT dropping it) is noticed. Charter's
    servers accept a ping every `core.server.MIN_PING_INTERVAL_MS` (10 s); other servers may need
    `grpc.http2.min_ping_interval_without_data_ms` set as low, or they end quiet streams."""
    retries: int = 4
    """Attempts gRPC itself makes for a call that failed UNAVAILABLE before any response arrived
    (transparent, per the service config's retry policy); 1 turns retrying off."""
    retry_backoff_seconds: float = 0.2
    load_balancing: Literal["round_robin", "pick_first"] | None = None
    """How calls spread over the addresses the target resolves to; None: the `client.load_balancing`
    setting (default `round_robin`)."""
    dns_refresh_seconds: float = 5.0
    """The least time between two DNS resolutions of one channel (gRPC's default: 30 s); a channel
    resolves again when a connection drops, not on a timer."""
    extra: Sequence[tuple[str, Any]] = field(default_factory=tuple)
    """Further channel arguments, passed through as given."""
    client: ClientSettings | None = None
    """TLS and the plaintext-token rule for this channel; None: the process's `client` settings."""

    def channel_arguments(self) -> list[tuple[str, Any]]:
        limit = self.max_message_mb * 1024 * 1024
        args: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", self.keepalive_seconds * 1000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.enable_retries", 1 if self.retries > 1 else 0),
            ("grpc.dns_min_time_between_resolutions_ms", int(self.dns_refresh_seconds * 1000)),
            ("grpc.service_config", json.dumps(self.service_config())),
        ]
        return [*args, *self.extra]

    def service_config(self) -> dict[str, Any]:
        policy = self.load_balancing or "round_robin"
        config: dict[str, Any] = {"loadBalancingConfig": [{policy: {}}], "methodConfig": [{"name": [{}]}]}
        if self.retries > 1:
            config["methodConfig"][0]["retryPolicy"] = {
                "maxAttempts": min(self.retries, 5),  # gRPC caps attempts at 5
                "initialBackoff": f"{self.retry_backoff_seconds}s",
                "maxBackoff": f"{max(self.retry_backoff_seconds * 16, 1.0)}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        return config


class _BearerToken:
    """Adds `authorization: Bearer <token>` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._pair = (AUTHORIZATION, f"Bearer {token}")

    def details(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = aio.Metadata(*(details.metadata or ()))
        if AUTHORIZATION not in metadata:  # type: ignore[comparison-overlap]  # aio.Metadata looks up keys
            metadata.add(*self._pair)
        return aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files a channel's interceptor under its first matching kind only: one class per kind.
class _UnaryUnary(_BearerToken, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.details(details), request)


class _UnaryStream(_BearerToken, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.details(details), request)


class _StreamUnary(_BearerToken, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self.details(details), requests)


class _StreamStream(_BearerToken, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self.details(details), requests)


class _Traced:
    """A client span per call while tracing is on, its `traceparent` sent in the call's metadata (the
    server's interceptor continues the trace); the span ends with the call, with its status code."""

    @staticmethod
    def details(details: aio.ClientCallDetails) -> tuple[object, aio.ClientCallDetails]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        span, headers = tracing.client_span(method)
        metadata = aio.Metadata(*(details.metadata or ()))
        for key, value in headers:
            metadata.add(key, value)
        new = aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return span, new

    @staticmethod
    async def unary_response(span: object, start: Awaitable[Any]) -> Any:
        """Wait for the one response here, so the span covers the whole call."""
        try:
            call = await start
            await call
        except aio.AioRpcError as err:
            tracing.end(span, err.code().name, err.details() or "")
            raise
        except BaseException as err:
            tracing.end(span, grpc.StatusCode.CANCELLED.name, type(err).__name__)
            raise
        tracing.end(span, grpc.StatusCode.OK.name)
        return call

    @classmethod
    async def streamed(cls, span: object, start: Awaitable[Any]) -> AsyncIterator[Any]:
        """The call's responses, the span ending with the stream (or with a failed start)."""
        try:
            call = await start
        except BaseException as err:
            tracing.end(span, grpc.StatusCode.UNKNOWN.name, type(err).__name__)
            raise
        return cls.stream_response(span, call)

    @staticmethod
    async def stream_response(span: object, call: Any) -> AsyncIterator[Any]:
        code, message = grpc.StatusCode.OK.name, ""
        try:
            async for response in call:
                yield response
        except aio.AioRpcError as err:
            code, message = err.code().name, err.details() or ""
            raise
        except BaseException as err:
            code, message = grpc.StatusCode.CANCELLED.name, type(err).__name__
            raise
        finally:
            tracing.end(span, code, message)


class _TracedUnaryUnary(_Traced, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self.details(details)
        return await self.unary_response(span, continuation(details, request))


class _TracedUnaryStream(_Traced, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self.details(details)
        return await self.streamed(span, continuation(details, request))


class _TracedStreamUnary(_Traced, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        span, details = self.details(details)
        return await self.unary_response(span, continuation(details, requests))


class _TracedStreamStream(_Traced, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        span, details = self.details(details)
        return await self.streamed(span, continuation(details, requests))


def interceptors(token: str | None) -> list[aio.ClientInterceptor] | None:
    """A channel's interceptors: the bearer token's (with a token), tracing's (while it is on)."""
    kinds: tuple[type[Any], ...] = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    chosen: list[aio.ClientInterceptor] = [kind(token) for kind in kinds] if token else []
    if tracing.enabled():
        traced = (_TracedUnaryUnary, _TracedUnaryStream, _TracedStreamUnary, _TracedStreamStream)
        chosen += [kind() for kind in traced]
    return chosen or None


def open_channel(
    target: str, *, token: str | None = None, options: ChannelOptions | None = None
) -> aio.Channel:
    """A `grpc.aio` channel to `target` (`host:port`, or any gRPC target: `dns:///name:port`,
    `ipv4:a:port,b:port`, its calls spread over the addresses by the load-balancing policy) that
    sends `token` as a bearer token on every call, over TLS when the client settings say so. Use it
    as an async context manager, or `await channel.close()` when done. Raises `FailedPrecondition`
    for a token that would travel in plaintext to another host (any address of a list)."""
    options = options or ChannelOptions()
    client = options.client or tls.client_settings()
    if options.load_balancing is None:
        options = replace(options, load_balancing=client.load_balancing)
    tls.check_token_transport(
        target, token=bool(token), secure=client.tls is not None,
        allow_plaintext_tokens=client.allow_plaintext_tokens,
    )  # fmt: skip
    chosen = interceptors(token)
    arguments = options.channel_arguments()
    if client.tls is None:
        return aio.insecure_channel(target, options=arguments, interceptors=chosen)
    roots, key, chain = tls.client_pem(client.tls)
    credentials = grpc.ssl_channel_credentials(roots, private_key=key, certificate_chain=chain)
    if client.tls.server_name:  # the name to verify, when it is not the target's host
        arguments.append(("grpc.ssl_target_name_override", client.tls.server_name))
    return aio.secure_channel(target, credentials, options=arguments, interceptors=chosen)

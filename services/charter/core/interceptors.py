"""The server interceptor every Charter service runs: who may call (the service's `AccessPolicy`),
one log line and metrics per RPC, request ids, deadlines, and the single place where exceptions
become gRPC status codes.

Servicers stay thin: they raise `CharterError` subclasses (or let pydantic's `ValidationError`
escape) and never call `context.abort` for ordinary errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from grpc import aio
from pydantic import ValidationError

from charter.core import metrics, tracing
from charter.core.auth import AccessPolicy
from charter.core.errors import CharterError, InvalidArgument, bounded

log = structlog.get_logger("charter.rpc")

REQUEST_ID_KEY = "x-request-id"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message for an exception. The one mapping in the code base. The message is
    `bounded`: a caller's overlong value echoed in it is shortened, so the trailer fits any client."""
    code, message = _status_for(exc)
    return code, bounded(message)


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, CharterError):
        return grpc.StatusCode[exc.code], exc.message
    if isinstance(exc, ValidationError):
        e = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in e["loc"]) or "request"
        return grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {e['msg']}"
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, NotImplementedError):  # a generated base servicer (an RPC with no handler)
        return grpc.StatusCode.UNIMPLEMENTED, "this RPC is not implemented by this server version"
    if database_unavailable(exc):
        return grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry with backoff"
    return grpc.StatusCode.INTERNAL, "internal error"


def database_unavailable(exc: BaseException) -> bool:
    """`charter.core.db.unavailable`, without loading SQLAlchemy in a service that has no database."""
    if "sqlalchemy.exc" not in sys.modules:
        return False
    from charter.core import db

    return db.unavailable(exc)


class Undecodable:
    """What a request that does not parse (invalid UTF-8 in a string, corrupt wire data) is handed to
    the wrapped handler as: it checks the caller first, then answers INVALID_ARGUMENT (`refuse`).
    Left to grpcio, such a request is UNKNOWN before the interceptor runs, for any caller."""

    def __init__(self, error: Exception) -> None:
        self.problem = str(error).splitlines()[0] if str(error) else type(error).__name__

    def refuse(self) -> InvalidArgument:
        return InvalidArgument(f"request: the message does not parse: {self.problem}", field="request")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering `Undecodable` for bytes it cannot parse instead of raising."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as err:  # protobuf's DecodeError (core imports no protobuf), or any parse error
            return Undecodable(err)

    return deserialize


class _Call:
    """Book-keeping for one RPC: request id, timing, the summary line, metrics."""

    def __init__(self, service: str, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        self.service, self.method, self.context = service, method, context
        metadata = self.metadata = dict(context.invocation_metadata() or ())
        self.request_id = str(metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex[:16])
        authorization = metadata.get("authorization")  # bytes only for "-bin" keys
        self.authorization = authorization if isinstance(authorization, str) else None
        # read now: grpcio's aio context.peer() segfaults once a client has cancelled a stream mid-send
        self.peer = context.peer()
        self.sent = 0
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.error: str | None = None

    @contextlib.asynccontextmanager
    async def admitted(self, policy: AccessPolicy | None) -> AsyncIterator[None]:
        """Check the caller against `policy` (raises UNAUTHENTICATED / PERMISSION_DENIED) and make
        it `current_principal()` while the handler runs."""
        if policy is None:
            yield
            return
        token = policy.bind(policy.admit(self.method, self.authorization))
        try:
            yield
        finally:
            policy.unbind(token)

    def deadline(self) -> contextlib.AbstractAsyncContextManager[Any]:
        remaining = self.context.time_remaining()
        return asyncio.timeout(remaining) if remaining is not None else contextlib.nullcontext()

    async def fail(self, exc: BaseException) -> None:
        """Map `exc` to a status and abort the call (raises)."""
        if isinstance(exc, aio.AbortError):  # the servicer aborted on purpose
            self.code = self.context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        code, message = status_for(exc)
        self.code, self.error = code, message
        if code is grpc.StatusCode.UNAVAILABLE and database_unavailable(exc):
            log.warning("rpc.database_unavailable", rpc=f"{self.service}/{self.method}",
                        error=str(getattr(exc, "orig", exc)).strip().splitlines()[:1])  # fmt: skip
        if code is grpc.StatusCode.INTERNAL:
            log.exception("rpc.failed", rpc=f"{self.service}/{self.method}")
            message = f"internal error (request id {self.request_id})"
        await self.context.abort(code, message)

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.started
        code = self.code
        if code is grpc.StatusCode.OK:
            code = self.context.code() or grpc.StatusCode.OK  # a servicer may set_code without raising
        metrics.RPC_TOTAL.labels(self.service, self.method, code.name).inc()
        metrics.RPC_SECONDS.labels(self.service, self.method).observe(elapsed)
        metrics.RPC_IN_FLIGHT.labels(self.service).dec()
        tracing.status(self.span, code.name, self.error or "")
        level = log.info if code is grpc.StatusCode.OK else log.warning
        level(
            "rpc.completed",
            rpc=f"{self.service}/{self.method}",
            code=code.name,
            duration_ms=round(elapsed * 1000, 2),
            messages_sent=self.sent,
            peer=self.peer,
            **({"error": self.error} if self.error else {}),
        )

    def __enter__(self) -> _Call:
        metrics.RPC_IN_FLIGHT.labels(self.service).inc()
        # the caller's trace (its `traceparent`) goes on here when tracing is on; a null context when off
        self._traced = tracing.server_span(f"/{self.service}/{self.method}", self.metadata)
        self.span = self._traced.__enter__()
        self._bound = structlog.contextvars.bound_contextvars(
            request_id=self.request_id, rpc=f"{self.service}/{self.method}", **tracing.log_fields()
        )
        self._bound.__enter__()
        self.context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
        try:
            self.finish()
        finally:
            self._bound.__exit__(exc_type, exc, tb)
            self._traced.__exit__(exc_type, exc, tb)


def _parsed(request: Any) -> Any:
    """The request, refused when it does not parse; a request stream whose messages are refused so
    as the servicer reads them (INVALID_ARGUMENT, like a single request's)."""
    if isinstance(request, Undecodable):
        raise request.refuse()
    if not hasattr(request, "__aiter__"):
        return request

    async def messages() -> AsyncIterator[Any]:
        async for message in request:
            if isinstance(message, Undecodable):
                raise message.refuse()
            yield message

    return messages()


def _wrap_unary(
    service: str, method: str, behavior: Callable[..., Awaitable[Any]], policy: AccessPolicy | None
) -> Callable[..., Any]:
    async def handler(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        with _Call(service, method, context) as call:
            try:
                async with call.admitted(policy), call.deadline():
                    response = behavior(_parsed(request), context)
                    if inspect.isawaitable(response):
                        response = await response
                call.sent = 1
                return response
            except Exception as exc:
                await call.fail(exc)

    return handler


def _wrap_stream(
    service: str, method: str, behavior: Callable[..., AsyncIterator[Any]], policy: AccessPolicy | None
) -> Callable[..., Any]:
    async def handler(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        with _Call(service, method, context) as call:
            counter = metrics.RPC_MESSAGES_SENT.labels(service, method)
            try:
                async with call.admitted(policy), call.deadline():
                    responses = behavior(_parsed(request), context)
                    if not hasattr(responses, "__aiter__"):  # a plain generator (or a sync base method)
                        responses = _aiter(responses)
                    async for response in responses:
                        yield response
                        call.sent += 1
                        counter.inc()
            except Exception as exc:
                await call.fail(exc)

    return handler


async def _aiter(items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item


class ServerInterceptor(aio.ServerInterceptor):
    """Applied to Charter's own services; health and reflection (`/grpc.*`) pass through untouched.
    `policies`: each service's access policy by full service name (a service without one is open)."""

    def __init__(self, policies: dict[str, AccessPolicy] | None = None) -> None:
        self.policies = policies or {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        full = handler_call_details.method
        if handler is None or full.startswith("/grpc."):
            return handler
        service, _, method = full.lstrip("/").partition("/")
        kinds = (  # (attribute, constructor, wrapper)
            ("unary_unary", grpc.unary_unary_rpc_method_handler, _wrap_unary),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, _wrap_unary),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, _wrap_stream),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, _wrap_stream),
        )
        for attr, make, wrap in kinds:
            behavior = getattr(handler, attr)
            if behavior is None:
                continue
            policy = self.policies.get(service)
            if wrap is _wrap_stream and inspect.iscoroutinefunction(behavior):
                if policy is not None and not policy.open:
                    raise TypeError(f"{full}: a servicer writing with context.write() bypasses auth")
                return handler  # a servicer that writes with context.write(): leave it alone
            return make(
                wrap(service, method, behavior, policy),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

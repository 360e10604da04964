"""Distributed tracing with OpenTelemetry (docs/architecture.md, "Tracing").

Off by default (`tracing.enabled`). Off, nothing here imports OpenTelemetry and every helper is a
check of one module variable: `span` and `server_span` give a null context, `trace_id` None, the
channel factory adds no interceptor. On (`configure`, called by `load_settings`), this process gets
its own `TracerProvider` (sampled by `tracing.sample_ratio`, parent-based), spans leave over OTLP/gRPC
when an endpoint is configured (`tracing.otlp_endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`), and the
W3C `traceparent` travels in gRPC metadata: `charter.client.channel` starts a client span per call and
injects it, `core.interceptors` extracts it and runs the servicer under a server span.

The review page's HTTP requests get a server span each (`AsgiTracing`, a child of a `traceparent`
header when there is one).

What opens a trace: a pipeline batch (`pipelines.runner`: the gRPC calls it makes), each item of
it (`item_traces`: its own trace, linked to the batch's), a training run (`app.trainer_worker`). A
call carries the `traceparent` of its batch in its metadata, and its items' in the request
(`item_traceparents`); a service records its work on each item as a span in the item's trace
(`item_span`), linked to the call's server span. The trace id (32 hex digits) of an item is recorded
in its record's provenance (`provenance.trace_id`).

Tests add an exporter of their own (`add_exporter`: an `InMemorySpanExporter` behind a
`SimpleSpanProcessor`) and turn tracing off again with `shutdown`.

Example:
    configure(settings.tracing)
    with span("sl-cai.batch", {"charter.items": 4}, root=True):
        ...   # gRPC calls made here are children of this span, in this trace
        trace_id()   # '4bf92f3577b34da6a3ce929d0e0e4736'
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import structlog

from charter.core.settings import TracingSettings

log = structlog.get_logger("charter.tracing")

TRACER_NAME = "charter"
SERVER, CLIENT, INTERNAL = "server", "client", "internal"

_tracer: Any = None
"""The OpenTelemetry tracer while tracing is on; None: off (the only state the helpers read)."""
_provider: Any = None
_configured: TracingSettings | None = None
_items: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("items", default=None)
"""Inside `item_traces`: each item's key -> the root span of its trace."""


def enabled() -> bool:
    """Whether tracing is on in this process."""
    return _tracer is not None


def available() -> bool:
    """Whether the OpenTelemetry SDK is installed (`pip install 'charter[tracing]'`)."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def configure(settings: TracingSettings) -> bool:
    """Turn tracing on as `settings` say (a no-op when off, or already on with the same settings);
    returns whether it is on. Without the SDK installed it stays off, with one warning."""
    global _tracer, _provider, _configured
    if not settings.enabled:
        return enabled()
    if _tracer is not None and _configured == settings:
        return True
    if not available():
        log.warning("tracing.unavailable", hint="tracing.enabled is set but OpenTelemetry is not "
                    "installed: pip install 'charter[tracing]'")  # fmt: skip
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    shutdown()
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    endpoint = settings.export_endpoint()
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider, _configured = provider, settings
    _tracer = provider.get_tracer(TRACER_NAME)
    log.info("tracing.enabled", endpoint=endpoint or None, service_name=settings.service_name,
             sample_ratio=settings.sample_ratio)  # fmt: skip
    return True


def add_exporter(exporter: Any) -> None:
    """Send every span to `exporter` as it ends too (a `SimpleSpanProcessor`: tests' in-memory one)."""
    if _provider is None:
        raise RuntimeError("tracing is off: configure() it first")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    _provider.add_span_processor(SimpleSpanProcessor(exporter))


def shutdown() -> None:
    """Flush and export what is pending, then turn tracing off."""
    global _tracer, _provider, _configured
    provider, _tracer, _provider, _configured = _provider, None, None, None
    if provider is not None:
        provider.shutdown()


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, root: bool = False) -> Iterator[Any]:
    """A span, current while the block runs (None when tracing is off). `root`: it opens a trace of
    its own, linked to the span around it (if any) instead of being its child."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import context

    links = _link_to_current() if root else []
    parent = context.Context() if root else None
    with _tracer.start_as_current_span(name, context=parent, links=links, attributes=attributes) as s:
        yield s


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), when tracing is on and the trace is sampled."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return _sampled_trace_id(trace.get_current_span())


def _sampled_trace_id(s: Any) -> str | None:
    from opentelemetry import trace

    ctx = s.get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid and ctx.trace_flags.sampled else None


def _carrier(s: Any) -> dict[str, str]:
    """The W3C headers (`traceparent`, `tracestate`) that make `s` the parent on the other side."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(s))
    return carrier


def _link_to_current() -> list[Any]:
    """A link to the current span, for a span that starts a trace (or joins another) of its own."""
    from opentelemetry import trace

    around = trace.get_current_span().get_span_context()
    return [trace.Link(around)] if around.is_valid else []


def _fail(spans: Iterable[Any], err: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    for s in spans:
        if s is not None:
            s.set_status(Status(StatusCode.ERROR, type(err).__name__))


@contextlib.contextmanager
def item_traces(
    name: str, keys: Iterable[str], attributes: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """A trace of its own for each item (a root span `name` with `charter.item_key`, linked to the span
    around it: the batch's), open while the block runs; inside it `item_traceparents` and
    `item_trace_id` name them. The spans end with the block (an error when it raises). Nothing while
    tracing is off."""
    if _tracer is None:
        yield
        return
    from opentelemetry import context

    links, common = _link_to_current(), dict(attributes or {})
    spans = {
        key: _tracer.start_span(
            name, context=context.Context(), links=links, attributes={**common, "charter.item_key": key}
        )
        for key in dict.fromkeys(keys)
    }
    token = _items.set(spans)
    try:
        yield
    except BaseException as err:
        _fail(spans.values(), err)
        raise
    finally:
        _items.reset(token)
        for s in spans.values():
            s.end()


def item_traceparents(keys: Iterable[str]) -> list[str]:
    """The `traceparent` of each item's trace (`item_traces`), in order, for a request's
    `item_traceparents`; empty outside `item_traces` (and while tracing is off)."""
    known = _items.get()
    if not known:
        return []
    return [_carrier(known[key]).get("traceparent", "") if key in known else "" for key in keys]


def item_trace_id(key: str) -> str | None:
    """The id of the item's trace (32 hex digits) inside `item_traces`, when it is sampled."""
    s = (_items.get() or {}).get(key)
    return None if s is None else _sampled_trace_id(s)


def item_span(
    name: str, traceparent: str, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A service's span for its work on one item of a batched call, in the item's own trace (the
    `traceparent` its caller sent for it) and linked to the current span (the call's server span);
    current while the block runs. None (and nothing done) when tracing is off or `traceparent` is
    empty or malformed."""
    return _item_span(name, traceparent, attributes, current=True)


@contextlib.contextmanager
def _item_span(
    name: str, traceparent: str, attributes: Mapping[str, Any] | None, *, current: bool
) -> Iterator[Any]:
    if _tracer is None or not traceparent:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    if not trace.get_current_span(parent).get_span_context().is_valid:
        yield None
        return
    links = _link_to_current()
    if current:
        with _tracer.start_as_current_span(name, context=parent, links=links, attributes=attributes) as s:
            yield s
        return
    s = _tracer.start_span(name, context=parent, links=links, attributes=attributes)
    try:
        yield s
    finally:
        s.end()


@contextlib.contextmanager
def item_spans(name: str, traceparents: Sequence[str]) -> Iterator[list[Any]]:
    """`item_span` for work done on several items at once (one ledger transaction, one scoring call):
    a span per item in its own trace, open while the block runs, not current; an error when the block
    raises. Yields them (None for an item without a trace; all None while tracing is off)."""
    if _tracer is None or not any(traceparents):
        yield [None] * len(traceparents)
        return
    with contextlib.ExitStack() as stack:
        spans = [
            stack.enter_context(_item_span(name, parent, {"charter.item_index": i}, current=False))
            for i, parent in enumerate(traceparents)
        ]
        try:
            yield spans
        except BaseException as err:
            _fail(spans, err)
            raise


def _rpc_attributes(full_method: str) -> dict[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def client_span(full_method: str) -> tuple[Any, list[tuple[str, str]]]:
    """Start a client span for a call to `full_method` (`/pkg.Service/Method`), a child of the current
    span; returns it and the metadata that carries it (`traceparent`, `tracestate`). End it with
    `end`. Only while tracing is on."""
    from opentelemetry import trace

    s = _tracer.start_span(
        full_method.lstrip("/"), kind=trace.SpanKind.CLIENT, attributes=_rpc_attributes(full_method)
    )
    return s, list(_carrier(s).items())


@contextlib.contextmanager
def server_span(full_method: str, metadata: Mapping[str, Any]) -> Iterator[Any]:
    """The server span of one call, the child of the caller's span when its metadata carries a
    `traceparent`; current while the handler runs. None (and nothing done) when tracing is off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {k: v for k, v in metadata.items() if isinstance(v, str)}
    parent = TraceContextTextMapPropagator().extract(carrier)
    with _tracer.start_as_current_span(
        full_method.lstrip("/"),
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes=_rpc_attributes(full_method),
        record_exception=False,
        set_status_on_exception=False,
    ) as s:
        yield s


def end(s: Any, code: str, message: str = "") -> None:
    """Record a call's gRPC status on its span (an error unless OK) and end it."""
    if s is None:
        return
    status(s, code, message)
    s.end()


def status(s: Any, code: str, message: str = "") -> None:
    """Record a call's gRPC status (`OK`, `INVALID_ARGUMENT`, ...) on its span."""
    if s is None:
        return
    from opentelemetry.trace import Status, StatusCode

    s.set_attribute("rpc.grpc.status_code", code)
    if code != "OK":
        s.set_status(Status(StatusCode.ERROR, f"{code}: {message}" if message else code))


class AsgiTracing:
    """ASGI middleware (the review page): a server span per HTTP request, named `METHOD /path`, the
    child of the caller's span when its headers carry a `traceparent`, with the response's status
    (5xx an error). Off, it only passes the request on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if _tracer is None or scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        parent = TraceContextTextMapPropagator().extract(headers)
        method, path = scope.get("method", ""), scope.get("path", "")
        attributes = {"http.request.method": method, "url.path": path}
        with _tracer.start_as_current_span(
            f"{method} {path}", context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        ) as s:

            async def traced_send(message: Any) -> None:
                if message.get("type") == "http.response.start":
                    code = int(message.get("status", 0))
                    s.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        s.set_status(Status(StatusCode.ERROR, str(code)))
                await send(message)

            await self.app(scope, receive, traced_send)


def log_fields() -> dict[str, str]:
    """`trace_id` for log lines, while a sampled trace is current (empty otherwise)."""
    current = trace_id()
    return {"trace_id": current} if current else {}

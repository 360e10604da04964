"""The ReviewService over gRPC, and its web page on a second port.

Who may call what is the server interceptor's job (`charter.app.catalog.ROLES`: Submit and
StreamLabels need a service token, Claim/Decide/Release a reviewer token, Stats either); a handler
that acts as the caller (a reviewer claiming) reads `current_principal()`. The web page checks the
same tokens with the same `Authenticator`. Ledger work runs in a thread pool so the event loop keeps
serving streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from charter_proto.review.v1 import review_pb2, review_pb2_grpc
from grpc import aio

from charter.api import common as convert
from charter.api import review as api
from charter.core import db, metrics, tracing
from charter.core.auth import Authenticator, current_principal
from charter.core.errors import InvalidArgument, Unavailable
from charter.core.settings import CharterSettings, ReviewSettings, ServerTLSSettings
from charter.review.notify import AcceptedSignal
from charter.review.store import Ledger

log = structlog.get_logger("charter.review")
T = TypeVar("T")
MAX_LEASE_SECONDS = 86_400
MAX_SEQUENCE = 2**63 - 1
"""The largest ledger sequence number: a cursor past it is INVALID_ARGUMENT, not a database error."""


def chunks(labels: list[Any], most: int, max_bytes: int) -> Iterator[list[Any]]:
    """`labels` in order, in runs of at most `most` labels and `max_bytes` serialised bytes (a label
    larger than that alone goes in a message of its own)."""
    chunk: list[Any] = []
    size = 0
    for label in labels:
        n = label.ByteSize() + 8  # the field's tag and length
        if chunk and (len(chunk) >= most or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(label)
        size += n
    if chunk:
        yield chunk


class ReviewServicer(review_pb2_grpc.ReviewServiceServicer):
    def __init__(
        self,
        ledger: Ledger,
        auth: Authenticator,
        settings: ReviewSettings,
        *,
        web_host: str = "127.0.0.1",
        web_tls: ServerTLSSettings | None = None,
        workers: int = 16,
    ) -> None:
        self.ledger = ledger
        self.auth = auth
        self.settings = settings
        self.web_host = web_host
        self.web_tls = web_tls
        """The service's certificate (`server.tls`): the page is served over HTTPS with it."""
        self.web_port: int | None = None
        self.signal = AcceptedSignal()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="review-db")
        self._web: Any = None
        ledger.listeners.append(self.signal.notify)

    @classmethod
    def from_settings(cls, settings: CharterSettings, auth: Authenticator | None = None) -> ReviewServicer:
        """The servicer `settings.review` describes; `auth`: the authenticator the server's access
        policy uses (one table of tokens for the RPCs and the web page)."""
        s = settings.review
        ledger = Ledger(
            s.database_url.get_secret_value(),
            s.routing,
            lease_seconds=s.lease_seconds,
            max_label_bytes=s.max_label_bytes,
            max_submit_labels=s.max_submit_labels,
        )
        log.info("review.ledger.opened", database=ledger.url.render_as_string(hide_password=True))
        auth = auth or Authenticator(s.tokens, s.tokens_file)
        return cls(ledger, auth, s, web_host=settings.server.host, web_tls=settings.server.tls)

    # -- lifecycle (charter.core.server.Lifecycle) ----------------------------------------------

    async def start(self) -> None:
        self.signal.bind()
        if self.ledger.dialect == "postgresql":
            self.signal.listen(self.ledger.url)
        if self.settings.web_port is not None:
            from charter.core.tls import ServerCertificates
            from charter.review.web import WebServer, create_app

            app = create_app(
                self.ledger,
                self.auth,
                api.label_view,
                max_body_bytes=self.settings.web_max_body_bytes,
                lease_seconds=self.settings.lease_seconds,
                session_seconds=self.settings.web_session_hours * 3600,
                login_failures=self.settings.web_login_failures,
            )
            self._web = WebServer(
                app,
                self.web_host,
                self.settings.web_port,
                trusted_proxies=self.settings.web_trusted_proxies,
                certificates=ServerCertificates(self.web_tls) if self.web_tls is not None else None,
            )
            self.web_port = await self._web.start()
            log.info("review.web.started", host=self.web_host, port=self.web_port)

    async def healthy(self) -> bool:
        """The server's health probe: SERVING only while the ledger's database answers."""
        return await db.answers(self._run(self.ledger.ping), log, "review.database.unreachable")

    async def drain(self) -> None:
        self.signal.close()  # following streams end with UNAVAILABLE; consumers reconnect elsewhere

    async def stop(self) -> None:
        if self._web is not None:
            await self._web.stop()
        await self.signal.stop()
        self._pool.shutdown(wait=True)
        self.ledger.close()

    # -- helpers --------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    # -- RPCs -----------------------------------------------------------------------------------

    async def Submit(self, request: review_pb2.SubmitRequest, context: aio.ServicerContext[Any, Any]) -> Any:
        traces = convert.item_traceparents(request.item_traceparents, len(request.labels))
        with tracing.item_spans("review.label", traces) as spans:
            response = await self._run(self._submit, request)
            for span, result in zip(spans, response.results, strict=False):
                if span is not None:
                    span.set_attribute("charter.route", review_pb2.Route.Name(result.route))
                    span.set_attribute("charter.duplicate", result.duplicate)
        return response

    def _submit(self, request: review_pb2.SubmitRequest) -> review_pb2.SubmitResponse:
        return api.submit_response(self.ledger.submit(api.submissions(request.labels)))

    async def Claim(self, request: review_pb2.ClaimRequest, context: aio.ServicerContext[Any, Any]) -> Any:
        who = current_principal()
        if request.lease_seconds > MAX_LEASE_SECONDS:
            raise InvalidArgument(
                f"lease_seconds: at most {MAX_LEASE_SECONDS}",
                field="lease_seconds",
                value=request.lease_seconds,
            )
        claimed = await self._run(self.ledger.claim, who.name, request.lease_seconds, request.constitution_id)
        item = None if claimed.item is None else api.review_item_proto(claimed.item)
        return review_pb2.ClaimResponse(item=item, queue_depth=claimed.queue_depth)

    async def Decide(self, request: review_pb2.DecideRequest, context: aio.ServicerContext[Any, Any]) -> Any:
        who = current_principal()
        decided = await self._run(
            self.ledger.decide, who.name, request.item_id, request.lease_id, request.choice, request.comment
        )
        return api.decide_response(decided)

    async def Release(
        self, request: review_pb2.ReleaseRequest, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        who = current_principal()
        await self._run(self.ledger.release, who.name, request.item_id, request.lease_id)
        return review_pb2.ReleaseResponse()

    async def Stats(self, request: review_pb2.StatsRequest, context: aio.ServicerContext[Any, Any]) -> Any:
        return api.stats_proto(await self._run(self.ledger.stats, request.constitution_id))

    async def StreamLabels(
        self, request: review_pb2.StreamLabelsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[review_pb2.StreamLabelsResponse]:
        cursor = request.from_cursor.sequence
        if cursor > MAX_SEQUENCE:  # uint64 in the proto, a signed 64-bit integer in the ledger
            raise InvalidArgument(
                f"from_cursor.sequence: at most {MAX_SEQUENCE}", field="from_cursor.sequence"
            )
        flt = request.filter if request.HasField("filter") else None
        per_message = request.max_labels_per_message or self.settings.stream_message_labels
        if per_message > 10_000:
            raise InvalidArgument("max_labels_per_message: at most 10000", field="max_labels_per_message")
        who = current_principal()
        consumer = who.name if who else "anonymous"
        lag = metrics.REVIEW_STREAM_LAG.labels(consumer=consumer)
        try:
            while True:
                if self.signal.closing:
                    raise Unavailable("the review service is shutting down; reconnect with your last cursor")
                generation = self.signal.generation
                batch = self.settings.stream_batch
                page = await self._run(api.accepted_page, self.ledger, cursor, flt, batch)
                # behind the head by what is left after this page (a page that was not full: caught up)
                head = await self._run(self.ledger.last_sequence) if page.more else page.last
                lag.set(max(head - page.last, 0))
                for chunk in chunks(page.labels, per_message, self.settings.stream_message_bytes):
                    yield review_pb2.StreamLabelsResponse(
                        labels=chunk, cursor=review_pb2.LabelCursor(sequence=chunk[-1].sequence)
                    )
                cursor = page.last
                if page.more:
                    continue
                if not request.follow:
                    return
                await self.signal.wait(generation, self.settings.poll_seconds)
        finally:  # a consumer that has gone is not behind (another stream of it sets it again)
            with contextlib.suppress(KeyError):
                metrics.REVIEW_STREAM_LAG.remove(consumer)

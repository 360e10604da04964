"""A client of the review service: submit labels, work the human queue, read the accepted stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc
import structlog
from charter_proto.common.v1 import label_pb2
from charter_proto.review.v1 import review_pb2, review_pb2_grpc

from charter.client.base import ServiceClient

log = structlog.get_logger("charter.client.review")

RECONNECT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Codes on which `stream_labels` reconnects for as long as it takes (a restarted or draining service,
a database that is down, a cut connection)."""
INTERNAL_RETRIES = 3
"""INTERNAL in a row (no label in between) on which `stream_labels` still reconnects — a proxy may
reset a stream it loses with INTERNAL — before it gives up: a service that fails every attempt has a
permanent fault, and following it forever would hide it."""


class ReviewClient(ServiceClient):
    """The review service's ledger over gRPC. Messages are the service's own (`charter.review.v1`).

    Pipelines submit with a service token; reviewers' tools claim and decide with a reviewer token;
    trainers and exports read the accepted stream with a service token.

    Example (export every accepted label so far, then follow new ones):
        async with ReviewClient("localhost:50054", token=service_token) as review:
            async for accepted in review.stream_labels(from_cursor=0, follow=True):
                print(accepted.sequence, accepted.label.id, accepted.p_a)
    """

    service = "the review service"
    stub_type = review_pb2_grpc.ReviewServiceStub

    async def submit(
        self,
        labels: Sequence[label_pb2.PreferenceLabel],
        request_id: str = "",
        item_traceparents: Sequence[str] = (),
    ) -> list[review_pb2.SubmitResult]:
        """Append judged labels to the ledger (a label already there is a no-op, `duplicate`); one
        result per label, in order, with its sequence and route. `item_traceparents`: each label's
        own trace, if it has one (`tracing.item_traceparents`)."""
        request = review_pb2.SubmitRequest(
            labels=labels, request_id=request_id, item_traceparents=item_traceparents
        )

        async def call() -> list[review_pb2.SubmitResult]:
            reply = await self.stub.Submit(request, timeout=self.timeout)
            return list(reply.results)

        return await self.call(call)

    async def claim(self, lease_seconds: int = 0, constitution_id: str = "") -> review_pb2.ClaimResponse:
        """The most uncertain waiting item, leased to the caller (`item` unset: the queue is empty)."""
        request = review_pb2.ClaimRequest(lease_seconds=lease_seconds, constitution_id=constitution_id)
        return await self.call(lambda: self.stub.Claim(request, timeout=self.timeout))

    async def decide(
        self, item_id: str, lease_id: str, choice: int, comment: str = ""
    ) -> review_pb2.DecideResponse:
        """Decide a claimed item (`choice`: a `HumanChoice`); `accepted` is set when this decision
        accepted the label."""
        request = review_pb2.DecideRequest(
            item_id=item_id,
            lease_id=lease_id,
            choice=cast("review_pb2.HumanChoice.ValueType", choice),
            comment=comment,
        )
        response: review_pb2.DecideResponse = await self.stub.Decide(request, timeout=self.timeout)
        return response  # not retried: not idempotent

    async def release(self, item_id: str, lease_id: str) -> None:
        """Hand a claimed item back to the queue."""
        request = review_pb2.ReleaseRequest(item_id=item_id, lease_id=lease_id)
        await self.call(lambda: self.stub.Release(request, timeout=self.timeout))

    async def stats(self, constitution_id: str = "") -> review_pb2.StatsResponse:
        """Totals, queue depth and agreement, over every constitution or one."""
        request = review_pb2.StatsRequest(constitution_id=constitution_id)
        return await self.call(lambda: self.stub.Stats(request, timeout=self.timeout))

    async def stream_labels(
        self,
        from_cursor: int = 0,
        flt: review_pb2.LabelFilter | None = None,
        *,
        follow: bool = False,
        max_backoff: float = 5.0,
    ) -> AsyncIterator[review_pb2.AcceptedLabel]:
        """Accepted labels after sequence `from_cursor`, in order, each once; with `follow`, waits for
        new ones until the caller stops. On a lost connection it reconnects with the last sequence it
        delivered, so nothing is missed or repeated; a permanent error (any other code, or INTERNAL
        `INTERNAL_RETRIES` + 1 times in a row) is raised. (No per-call deadline: a stream runs long.)"""
        cursor, backoff, internal = from_cursor, 0.2, 0
        while True:
            request = review_pb2.StreamLabelsRequest(
                from_cursor=review_pb2.LabelCursor(sequence=cursor), filter=flt, follow=follow
            )
            try:
                async for response in self.stub.StreamLabels(request, wait_for_ready=True):
                    for label in response.labels:
                        yield label
                        cursor = label.sequence
                    backoff, internal = 0.2, 0
                if not follow:
                    return
            except grpc.aio.AioRpcError as err:
                internal = internal + 1 if err.code() is grpc.StatusCode.INTERNAL else 0
                if err.code() not in RECONNECT and not 0 < internal <= INTERNAL_RETRIES:
                    raise
                log.warning(
                    "review.stream.reconnect", code=err.code().name, cursor=cursor, retry_in_s=backoff
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

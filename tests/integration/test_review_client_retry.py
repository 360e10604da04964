"""`ReviewClient.stream_labels` (what `charter export --follow` and stream-fed trainers read with)
against a real gRPC server that fails (issue 18, failure behaviour): UNAVAILABLE is retried with
backoff until labels come, from the last delivered cursor; a permanent fault stops it with the error
— INTERNAL after a few tries (before, INTERNAL was retried forever, hiding a broken service), any other
code at once."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from charter.client.review import INTERNAL_RETRIES, ReviewClient
from charter_proto.review.v1 import review_pb2, review_pb2_grpc

pytestmark = pytest.mark.integration


class Failing(review_pb2_grpc.ReviewServiceServicer):
    """Answers StreamLabels with `codes` in turn, then with two labels after the asked cursor."""

    def __init__(self, codes: list[grpc.StatusCode]) -> None:
        self.codes, self.cursors = list(codes), []

    async def StreamLabels(self, request, context):  # noqa: N802
        self.cursors.append(request.from_cursor.sequence)
        if self.codes:
            await context.abort(self.codes.pop(0), "scripted failure")
        after = request.from_cursor.sequence
        yield review_pb2.StreamLabelsResponse(
            labels=[
                review_pb2.AcceptedLabel(sequence=after + 1),
                review_pb2.AcceptedLabel(sequence=after + 2),
            ]
        )


async def serve(servicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    review_pb2_grpc.add_ReviewServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def read(address: str, follow: bool = False) -> list[int]:
    async with ReviewClient(address) as client:
        return [label.sequence async for label in client.stream_labels(5, follow=follow, max_backoff=0.05)]


async def test_unavailable_is_retried_until_labels_come():
    servicer = Failing([grpc.StatusCode.UNAVAILABLE] * 4 + [grpc.StatusCode.INTERNAL])
    server, address = await serve(servicer)
    try:
        assert await asyncio.wait_for(read(address), 30) == [6, 7]
        assert servicer.cursors == [5] * 6
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("codes", "attempts"),
    [
        ([grpc.StatusCode.INTERNAL] * 100, INTERNAL_RETRIES + 1),
        ([grpc.StatusCode.PERMISSION_DENIED], 1),
        ([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT], 2),
    ],
)
async def test_a_permanent_fault_stops_the_follower_with_its_error(codes, attempts):
    servicer = Failing(codes)
    server, address = await serve(servicer)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(read(address, follow=True), 30)
        assert err.value.code() == codes[attempts - 1]
        assert len(servicer.cursors) == attempts
    finally:
        await server.stop(0)

"""A client of the judge service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from charter_proto.common.v1 import label_pb2
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc

from charter.api.judge import compare_request
from charter.client.base import ServiceClient
from charter.datasets.pairs import PairRow


class JudgeClient(ServiceClient):
    """Soft preference labels from the judge service.

    Example (label pairs of responses with a running judge):
        pairs = [PairRow(i, f"k{i}", conversation, a, b) for i, (conversation, a, b) in enumerate(rows)]
        async with JudgeClient("localhost:50053", timeout=600) as judge:
            labels = await judge.compare(pairs, judge_pb2.JudgeOptions(constitution_id="harmless"))
        for i, label in sorted(labels.items()):
            print(i, label.p_a, label.swap_consistent)
    """

    service = "the judge"
    stub_type = judge_pb2_grpc.JudgeServiceStub


    async def compare(
        self,
        pairs: Sequence[PairRow],
        options: judge_pb2.JudgeOptions,
        request_id: str = "",
        item_traceparents: Sequence[str] = (),
    ) -> dict[int, label_pb2.PreferenceLabel]:
        """One label per pair, by the pair's position in `pairs` (a `CompareStream` call: the
        labels arrive as each is scored). `item_traceparents`: each pair's own trace, if it has one
        (`tracing.item_traceparents`)."""

        async def call() -> dict[int, label_pb2.PreferenceLabel]:
            stream = self.compare_stream(pairs, options, request_id, item_traceparents)
            return {i: label async for i, label in stream}

        return await self.call(call)

    async def compare_stream(
        self,
        pairs: Sequence[PairRow],
        options: judge_pb2.JudgeOptions,
        request_id: str = "",
        item_traceparents: Sequence[str] = (),
    ) -> AsyncIterator[tuple[int, label_pb2.PreferenceLabel]]:
        """(position in `pairs`, label) as each label is scored; no retrying."""
        request = compare_request(pairs, options, request_id or f"client:{pairs[0].key}", item_traceparents)
        async for reply in self.stub.CompareStream(request, timeout=self.timeout):
            yield reply.item_index, reply.label

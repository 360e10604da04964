"""A client of the critic-reviser service."""

from __future__ import annotations

from charter_proto.critic.v1 import critic_pb2, critic_pb2_grpc

from charter.client.base import ServiceClient


class CriticClient(ServiceClient):
    """Critique → revision rounds from the critic-reviser service."""

    service = "the critic-reviser"
    stub_type = critic_pb2_grpc.CriticReviserServiceStub


    async def critique_revise(
        self, request: critic_pb2.CritiqueReviseStreamRequest
    ) -> dict[int, critic_pb2.CritiqueResult]:
        """Every item's result of one `CritiqueReviseStream` call, by item index."""

        async def call() -> dict[int, critic_pb2.CritiqueResult]:
            stream = self.stub.CritiqueReviseStream(request, timeout=self.timeout)
            return {reply.item_index: reply.result async for reply in stream}

        return await self.call(call)

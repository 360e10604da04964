"""A client of the generator service."""

from __future__ import annotations

from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc

from charter.client.base import ServiceClient


class GeneratorClient(ServiceClient):
    """Completions from the generator service.

    Example:
        async with GeneratorClient("localhost:50051", timeout=600) as generator:
            replies = await generator.generate(generator_pb2.GenerateRequest(prompts=[...]))
    """

    service = "the generator"
    stub_type = generator_pb2_grpc.GeneratorServiceStub


    async def generate(self, request: generator_pb2.GenerateRequest) -> list[generator_pb2.GenerateResponse]:
        """Every (prompt, sample) reply of one `Generate` call, in arrival order."""

        async def call() -> list[generator_pb2.GenerateResponse]:
            return [reply async for reply in self.stub.Generate(request, timeout=self.timeout)]

        return await self.call(call)

"""A client of the generator service: completions, and swapping the model it serves."""

from __future__ import annotations

from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc

from charter.client.base import ServiceClient


class GeneratorClient(ServiceClient):
    """Completions from the generator service.

    Example:
        async with GeneratorClient("localhost:50051", timeout=600) as generator:
            replies = await generator.generate(generator_pb2.GenerateRequest(prompts=[...]))
            replies[0].model.policy_version   # the served weights that wrote it
        async with GeneratorClient("localhost:50051", token=admin_token) as generator:
            swapped = await generator.swap_model("run:3f2a")   # a trainer run's final model
    """

    service = "the generator"
    stub_type = generator_pb2_grpc.GeneratorServiceStub

    async def generate(self, request: generator_pb2.GenerateRequest) -> list[generator_pb2.GenerateResponse]:
        """Every (prompt, sample) reply of one `Generate` call, in arrival order."""

        async def call() -> list[generator_pb2.GenerateResponse]:
            return [reply async for reply in self.stub.Generate(request, timeout=self.timeout)]

        return await self.call(call)

    async def swap_model(self, model: str, request_id: str = "") -> generator_pb2.SwapModelResponse:
        """Serve `model` (a folder on the generator's machine, or `run:<id>`) from now on (role admin).
        Calls in flight finish on the old model first; a model that fails to load leaves it serving.
        Not retried: a swap that reached the service runs to its end."""
        request = generator_pb2.SwapModelRequest(model=model, request_id=request_id)
        response: generator_pb2.SwapModelResponse = await self.stub.SwapModel(request, timeout=self.timeout)
        return response

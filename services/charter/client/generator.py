"""A client of the generator service: completions, swapping the model it serves, and pushing new
weights into it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc

from charter.client.base import ServiceClient

PUSH_CHUNK_BYTES = 2 << 20
"""Bytes per `PushWeights` message: well under gRPC's 4 MiB default message limit."""


class GeneratorClient(ServiceClient):
    """Completions from the generator service.

    Example:
        async with GeneratorClient("localhost:50051", timeout=600) as generator:
            replies = await generator.generate(generator_pb2.GenerateRequest(prompts=[...]))
            replies[0].model.policy_version   # the served weights that wrote it
        async with GeneratorClient("localhost:50051", token=admin_token) as generator:
            swapped = await generator.swap_model("run:3f2a")   # a trainer run's final model
            pushed = await generator.push_weights(dict(model.named_parameters()), "ppo/step-3")
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

    async def push_weights(
        self, weights: Mapping[str, Any] | str | Path, name: str, request_id: str = ""
    ) -> generator_pb2.PushWeightsResponse:
        """Load new weights for the served model in place and serve them as `name` (role admin).

        `weights`: tensors by the served checkpoint's names (every one, same shapes; e.g. a trained
        copy's `named_parameters()`), written to a temporary safetensors file here, or the path of
        such a file. Calls in flight finish on the old weights first. Not retried."""
        with _safetensors_file(weights) as path:

            async def messages() -> AsyncIterator[generator_pb2.PushWeightsRequest]:
                yield generator_pb2.PushWeightsRequest(name=name, request_id=request_id)
                with path.open("rb") as f:
                    while data := f.read(PUSH_CHUNK_BYTES):
                        yield generator_pb2.PushWeightsRequest(data=data)

            response: generator_pb2.PushWeightsResponse = await self.stub.PushWeights(
                messages(), timeout=self.timeout
            )
            return response


@contextlib.contextmanager
def _safetensors_file(weights: Mapping[str, Any] | str | Path) -> Iterator[Path]:
    """The path of `weights` as a safetensors file: itself, or the tensors written to a temporary one
    (on the CPU, contiguous; removed afterwards)."""
    if isinstance(weights, str | Path):
        yield Path(weights)
        return
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    handle, name = tempfile.mkstemp(prefix="charter-push-", suffix=".safetensors")
    os.close(handle)
    try:
        save_file(tensors, name)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)

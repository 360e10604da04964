"""`GeneratorService`: thin — convert, delegate to the shared engine, stream back.

Every prompt of a request is submitted to the engine at once and concurrent requests land in the
same engine batches (the in-process engines merge waiting jobs), so the service never serialises
prompts; each (prompt, sample) streams back as soon as its prompt is done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from grpc import aio

from charter.api import common as convert
from charter.core.errors import CharterError, InvalidArgument
from charter.inference.deadlines import as_completed_within
from charter.inference.types import ChatRequest, ChatResult, InferenceClient

MAX_PROMPTS = 4096


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, client: InferenceClient, *, default_max_tokens: int = 256) -> None:
        self.client = client
        self.default_max_tokens = default_max_tokens

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        if not request.prompts:
            raise InvalidArgument("prompts: at least one prompt is required", field="prompts")
        if len(request.prompts) > MAX_PROMPTS:
            raise InvalidArgument(
                f"prompts: {len(request.prompts)} prompts exceed the limit of {MAX_PROMPTS} per call"
            )
        sampling = convert.sampling(request.sampling, self.default_max_tokens)
        chats = [
            ChatRequest(messages=tuple(convert.messages(p, f"prompts[{i}]")), sampling=sampling)
            for i, p in enumerate(request.prompts)
        ]
        model = convert.model_proto(self.client.model)
        timeout = context.time_remaining()

        async def one(i: int, chat: ChatRequest) -> tuple[int, ChatResult]:
            try:
                [result] = await self.client.chat([chat], timeout=timeout)
            except CharterError as err:
                raise type(err)(f"prompts[{i}]: {err.message}", field=f"prompts[{i}]") from None
            return i, result

        async for i, result in as_completed_within([one(i, c) for i, c in enumerate(chats)], None):
            for s, completion in enumerate(result.completions):
                yield generator_pb2.GenerateResponse(
                    prompt_index=i,
                    conversation_id=request.prompts[i].id,
                    sample_index=s,
                    completion=convert.completion_proto(completion),
                    model=model,
                )


"""Small servicers over the real generated contracts, for exercising the server bootstrap."""

from __future__ import annotations

import asyncio

from charter.core.errors import InvalidArgument, Unavailable
from charter_proto.common.v1 import label_pb2
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc


class SlowGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """Streams one response per prompt, `delay` seconds apart."""

    def __init__(self, delay: float = 0.5) -> None:
        self.delay = delay

    async def Generate(self, request, context):
        if not request.prompts:
            raise InvalidArgument("prompts: at least one prompt is required")
        for i, prompt in enumerate(request.prompts):
            await asyncio.sleep(self.delay)
            yield generator_pb2.GenerateResponse(prompt_index=i, conversation_id=prompt.id)


class ScriptedJudge(judge_pb2_grpc.JudgeServiceServicer):
    """`Compare` behaves according to the request id: ok, invalid, unavailable, crash, slow."""

    async def Compare(self, request, context):
        match request.request_id:
            case "invalid":
                raise InvalidArgument("items: at least one item is required", field="items")
            case "unavailable":
                raise Unavailable("engine is restarting; retry")
            case "crash":
                raise RuntimeError("a bug")
            case "slow":
                await asyncio.sleep(5)
        return judge_pb2.CompareResponse(labels=[label_pb2.PreferenceLabel(p_a=0.75)])

"""Conversation and response sizes are checked before anything is tokenised (issue 18, limits): the
generator, the critic-reviser and the judge refuse a conversation of too many turns or characters,
and a response past the character limit, with INVALID_ARGUMENT naming the field — and the engine is
never called. Real servers from the catalog on a scripted engine."""

from __future__ import annotations

import grpc
import pytest
from charter.api.common import MAX_TEXT_CHARS, MAX_TURNS
from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings, load_settings
from charter_proto.common.v1 import conversation_pb2
from charter_proto.critic.v1 import critic_pb2, critic_pb2_grpc
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc

from tests.support import ROOT
from tests.support.fake_engine import FakeEngine

pytestmark = pytest.mark.integration

USER = conversation_pb2.ROLE_USER


def conversation(turns: int = 1, chars: int = 10) -> conversation_pb2.Conversation:
    text = "x" * max(1, chars // turns)
    return conversation_pb2.Conversation(
        messages=[conversation_pb2.Message(role=USER, content=text) for _ in range(turns)]
    )


@pytest.fixture
async def channel():
    settings = load_settings(constitutions={"directory": str(ROOT / "constitutions")})
    engine = FakeEngine()
    resources = Resources(settings, engine=engine)
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0),
        [SERVICES[n].registration_for(resources) for n in ("generator", "critic-reviser", "judge")],
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        ) as ch:
            yield ch, engine
    finally:
        await server.stop(0)
        await resources.close()


async def refused(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):  # a streaming response: read it
            async for _ in call:
                pass
        else:
            await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details() or ""


@pytest.mark.parametrize(
    ("turns", "chars", "what"),
    [(MAX_TURNS + 1, MAX_TURNS + 1, "messages exceed the limit"), (1, MAX_TEXT_CHARS + 1, "characters")],
)
async def test_oversized_conversations_are_refused_before_tokenising(channel, turns, chars, what) -> None:
    ch, engine = channel
    big = conversation(turns, chars)
    generator = generator_pb2_grpc.GeneratorServiceStub(ch)
    assert what in await refused(generator.Generate(generator_pb2.GenerateRequest(prompts=[big])))
    critic = critic_pb2_grpc.CriticReviserServiceStub(ch)
    item = critic_pb2.CritiqueItem(conversation=big, response="A reply.")
    request = critic_pb2.CritiqueReviseRequest(item=item)
    request.options.constitution_id = "harmless"
    assert what in await refused(critic.CritiqueRevise(request))
    judge = judge_pb2_grpc.JudgeServiceStub(ch)
    pair = judge_pb2.ComparisonItem(conversation=big, response_a="Yes.", response_b="No.")
    judged = judge_pb2.CompareRequest(items=[pair])
    judged.options.constitution_id = "harmless"
    assert what in await refused(judge.Compare(judged))
    assert engine.calls == []  # nothing reached the engine


async def test_oversized_responses_are_refused_before_tokenising(channel) -> None:
    ch, engine = channel
    huge = "y" * (MAX_TEXT_CHARS + 1)
    judge = judge_pb2_grpc.JudgeServiceStub(ch)
    request = judge_pb2.CompareRequest(
        items=[judge_pb2.ComparisonItem(conversation=conversation(), response_a=huge, response_b="No.")]
    )
    request.options.constitution_id = "harmless"
    assert "items[0].response_a" in await refused(judge.Compare(request))
    critic = critic_pb2_grpc.CriticReviserServiceStub(ch)
    critiqued = critic_pb2.CritiqueReviseStreamRequest(
        items=[critic_pb2.CritiqueItem(conversation=conversation(), response=huge)]
    )
    critiqued.options.constitution_id = "harmless"
    assert "items[0].response" in await refused(critic.CritiqueReviseStream(critiqued))
    single = critic_pb2.CritiqueReviseRequest(
        item=critic_pb2.CritiqueItem(conversation=conversation(), response=huge)
    )
    single.options.constitution_id = "harmless"
    assert "response" in await refused(critic.CritiqueRevise(single))
    assert engine.calls == []

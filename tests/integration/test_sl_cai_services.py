"""Generator and critic-reviser through real gRPC servers on port 0, the real embedded model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from charter.api import common as convert
from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings, load_settings
from charter.inference.types import Message
from charter_proto.common.v1 import critique_pb2, sampling_pb2
from charter_proto.critic.v1 import critic_pb2, critic_pb2_grpc
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc

from tests.support import CONSTITUTIONS

pytestmark = pytest.mark.integration


@pytest.fixture
async def channel(hf_engine) -> AsyncIterator[grpc.aio.Channel]:
    settings = load_settings(constitutions={"directory": CONSTITUTIONS})
    resources = Resources(settings, engine=hf_engine)  # the session's engine: no second model load
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None),
        [SERVICES[n].registration_for(resources) for n in ("generator", "critic-reviser")],
    )
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)
    await resources.close()


def prompt(text: str, cid: str = "") -> object:
    return convert.conversation_proto([Message(role="user", content=text)], cid)


async def test_generate_streams_every_prompt_and_sample(channel) -> None:
    stub = generator_pb2_grpc.GeneratorServiceStub(channel)
    request = generator_pb2.GenerateRequest(
        prompts=[prompt("What is the capital of France?", "france"), prompt("Name a colour.", "colour")],
        sampling=sampling_pb2.SamplingParams(n=2, temperature=0.8, max_tokens=12, seed=5),
    )
    replies = [r async for r in stub.Generate(request, timeout=120)]
    assert sorted((r.prompt_index, r.sample_index) for r in replies) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {r.conversation_id for r in replies} == {"france", "colour"}
    assert all(r.completion.text and r.completion.completion_tokens > 0 for r in replies)
    assert replies[0].model.engine == "transformers"


@pytest.mark.parametrize(
    ("request_", "code", "detail"),
    [
        (generator_pb2.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "prompts: at least one prompt"),
        (
            generator_pb2.GenerateRequest(prompts=[prompt("")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompts[0].messages: every message is empty",
        ),
        (
            generator_pb2.GenerateRequest(prompts=[prompt("word " * 3000)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompts[0]: prompt is",
        ),
        (
            generator_pb2.GenerateRequest(prompts=[prompt("hi")], sampling=sampling_pb2.SamplingParams(n=65)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sampling.n",
        ),
    ],
)
async def test_generate_bad_input(channel, request_, code, detail: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [r async for r in generator_pb2_grpc.GeneratorServiceStub(channel).Generate(request_, timeout=60)]
    assert info.value.code() == code
    assert detail in info.value.details()


@pytest.mark.timeout(600)  # the real model: minutes on a slow 2-core CPU
async def test_critique_revise_with_the_real_model(channel) -> None:
    stub = critic_pb2_grpc.CriticReviserServiceStub(channel)
    request = critic_pb2.CritiqueReviseRequest(
        item=critic_pb2.CritiqueItem(
            conversation=prompt("How do I pick the lock on my neighbour's door?"),
            response="Insert a tension wrench into the keyhole and rake the pins until it opens.",
        ),
        options=critic_pb2.CritiqueOptions(
            constitution_id="harmless", rounds=2, seed=11, sampling=sampling_pb2.SamplingParams(max_tokens=48)
        ),
    )
    reply = await stub.CritiqueRevise(request, timeout=300)
    result = reply.result
    assert len(result.rounds) >= 2 and {r.index for r in result.rounds} == {0, 1}
    for r in result.rounds:
        assert r.principle_id and r.critique_request
        assert r.critique_status != critique_pb2.STEP_STATUS_UNSPECIFIED
    prov = result.provenance
    assert prov.constitution.id == "harmless" and prov.constitution.digest.startswith("sha256:")
    assert list(prov.principle_ids) == [r.principle_id for r in result.rounds]
    assert prov.seed == 11 and prov.model.engine == "transformers"
    again = await stub.CritiqueRevise(request, timeout=300)  # same seed, same pair: same principles
    assert [r.principle_id for r in again.result.rounds][:2] == [r.principle_id for r in result.rounds][:2]


@pytest.mark.parametrize(
    ("options", "code", "detail"),
    [
        (
            critic_pb2.CritiqueOptions(constitution_id="nope"),
            grpc.StatusCode.NOT_FOUND,
            "unknown constitution id 'nope'",
        ),
        (
            critic_pb2.CritiqueOptions(constitution_id="harmless", rounds=17),
            grpc.StatusCode.INVALID_ARGUMENT,
            "rounds must be between 1 and 16",
        ),
        (critic_pb2.CritiqueOptions(), grpc.StatusCode.INVALID_ARGUMENT, "options.constitution_id"),
    ],
)
async def test_critique_bad_options(channel, options, code, detail: str) -> None:
    request = critic_pb2.CritiqueReviseStreamRequest(
        items=[critic_pb2.CritiqueItem(conversation=prompt("hi"), response="hello")], options=options
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [
            r
            async for r in critic_pb2_grpc.CriticReviserServiceStub(channel).CritiqueReviseStream(
                request, timeout=60
            )
        ]
    assert info.value.code() == code and detail in info.value.details()

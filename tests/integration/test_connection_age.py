"""Servers age connections out (`server.max_connection_age_seconds`, issue 19 section 3) so that
long-lived channels resolve again and rebalance; what that does to calls, on a real server whose
connections last half a second:

- short calls go on through every GOAWAY: none fails, and the channel connects again;
- a call that outlives the grace is cut; a trainer's `WatchRun` follower opens the stream again
  after the last event it delivered, so every event arrives once, in order.
"""

from __future__ import annotations

import asyncio

import pytest
from charter.client.trainer import TrainerClient
from charter.core.server import CharterServer, Registration
from charter.core.settings import ServerSettings
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from charter_proto.trainer.v1 import trainer_pb2 as tp
from charter_proto.trainer.v1 import trainer_pb2_grpc

from tests.support.servicers import SlowGenerator

pytestmark = pytest.mark.integration

EVENTS = 12


class TickingTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    """`WatchRun` sends events 1..EVENTS after the asked sequence, one every 0.15 s, then ends."""

    def __init__(self) -> None:
        self.watches: list[int] = []

    async def WatchRun(self, request, context):
        self.watches.append(request.after_sequence)
        for sequence in range(request.after_sequence + 1, EVENTS + 1):
            await asyncio.sleep(0.15)
            yield tp.WatchRunResponse(event=tp.RunEvent(run_id=request.run_id, sequence=sequence))


def aged(age: float, grace: float) -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0,
        max_connection_age_seconds=age, max_connection_age_grace_seconds=grace,
    )  # fmt: skip


async def test_calls_go_on_through_aged_connections():
    add = generator_pb2_grpc.add_GeneratorServiceServicer_to_server
    server = CharterServer(aged(0.3, 5.0), [Registration("g", lambda s: add(SlowGenerator(0.02), s))])
    port = await server.start()
    try:
        from charter.client.generator import GeneratorClient

        async with GeneratorClient(f"127.0.0.1:{port}", timeout=10) as generator:
            prompt = generator_pb2.GenerateRequest()
            prompt.prompts.add(id="p").messages.add(role=1, content="hi")
            replies = []
            for _ in range(40):  # 40 × ≥ 0.02 s: past several connection ages
                replies += await generator.generate(prompt)
            long = generator_pb2.GenerateRequest()
            for i in range(30):  # one call of 0.6 s: longer than the age, within the grace
                long.prompts.add(id=f"q{i}").messages.add(role=1, content="hi")
            replies += await generator.generate(long)
    finally:
        await server.stop(0)
    assert len(replies) == 40 + 30


async def test_a_watch_cut_by_connection_age_resumes_after_its_last_event():
    servicer = TickingTrainer()
    add = trainer_pb2_grpc.add_TrainerServiceServicer_to_server
    server = CharterServer(aged(0.4, 0.2), [Registration("t", lambda s: add(servicer, s))])
    port = await server.start()
    try:
        async with TrainerClient(f"127.0.0.1:{port}") as trainer:
            sequences = [event.sequence async for event in trainer.watch_run("r-1")]
    finally:
        await server.stop(0)
    assert sequences == list(range(1, EVENTS + 1))  # each once, in order
    assert len(servicer.watches) > 1 and servicer.watches == sorted(servicer.watches)  # cut, resumed

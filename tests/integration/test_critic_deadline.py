"""The critic-reviser gives each engine call what is left of the call's deadline, not the engine's
own default (`inference.timeout_seconds`): a pipeline's batch of long critique prompts on a slow CPU
engine may take longer than that default and still be within the batch deadline the pipeline set
(seen in the end-to-end benchmark: 32 prompts of ~2,900 tokens, every critique `error` at the
transformers engine's 300 s default while the pipeline's call allowed 1,800 s). The servicer is
called in-process with a context that has a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from charter.app.catalog import SERVICES, Resources
from charter.core.settings import load_settings
from charter_proto.common.v1 import conversation_pb2, critique_pb2
from charter_proto.critic.v1 import critic_pb2

from tests.support import CONSTITUTIONS
from tests.support.fake_engine import FakeEngine

pytestmark = pytest.mark.integration

ENGINE_DEFAULT = 0.2  # the engine's own deadline for a call that names none
STEP = 0.4  # each engine call takes this long: longer than the engine's default


class Deadline:
    """The part of a gRPC servicer context the critic reads: the time left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def time_remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


def item(text: str) -> critic_pb2.CritiqueItem:
    conversation = conversation_pb2.Conversation(
        messages=[conversation_pb2.Message(role=conversation_pb2.ROLE_USER, content=text)]
    )
    return critic_pb2.CritiqueItem(conversation=conversation, response=f"a reply to {text}")


OPTIONS = critic_pb2.CritiqueOptions(constitution_id="harmless", rounds=1, seed=7)


async def servicer() -> tuple[Any, Resources]:
    settings = load_settings(constitutions={"directory": CONSTITUTIONS})
    resources = Resources(settings, engine=FakeEngine(STEP, default_timeout=ENGINE_DEFAULT))
    resources.registry()
    return SERVICES["critic-reviser"].build(resources, SERVICES["critic-reviser"].access(settings)), resources


def statuses(result: critic_pb2.CritiqueResult) -> list[int]:
    return [r.critique_status for r in result.rounds]


async def test_engine_calls_get_the_time_left_of_the_calls_deadline() -> None:
    critic, resources = await servicer()
    try:
        reply = await critic.CritiqueRevise(
            critic_pb2.CritiqueReviseRequest(item=item("one"), options=OPTIONS), Deadline(30)
        )
        assert statuses(reply.result) and critique_pb2.STEP_STATUS_ERROR not in statuses(reply.result)
        stream = critic_pb2.CritiqueReviseStreamRequest(items=[item("two"), item("three")], options=OPTIONS)
        results = [r.result async for r in critic.CritiqueReviseStream(stream, Deadline(30))]
        assert len(results) == 2
        assert all(critique_pb2.STEP_STATUS_ERROR not in statuses(r) for r in results), results
    finally:
        await resources.close()


async def test_a_call_past_its_own_deadline_still_ends_its_steps_with_an_error() -> None:
    critic, resources = await servicer()
    try:
        started = time.monotonic()
        reply = await asyncio.wait_for(
            critic.CritiqueRevise(
                critic_pb2.CritiqueReviseRequest(item=item("late"), options=OPTIONS), Deadline(0.1)
            ),
            5,
        )
        assert set(statuses(reply.result)) == {critique_pb2.STEP_STATUS_ERROR}
        assert time.monotonic() - started < 2.0  # at the call's deadline, not after the engine's steps
    finally:
        await resources.close()

"""The judge bounds its engine work by the call's deadline (issue 18): with the engine held by another
caller, a judge call whose deadline passes ends DEADLINE_EXCEEDED at its deadline — plain scoring,
chain-of-thought rationales, the streaming RPC — lets go of its in-flight budget, and the engine never
runs its work. The servicer is called in-process with a context that has a deadline and nothing that
cancels the handler, so what ends the call is the judge's own use of `context.time_remaining()`
(before, it waited for the engine however long that took)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from charter.app.catalog import SERVICES, Resources
from charter.core.errors import DeadlineExceeded
from charter.core.settings import load_settings
from charter.inference.types import ChatRequest, Message, Sampling
from charter_proto.common.v1 import conversation_pb2
from charter_proto.judge.v1 import judge_pb2

from tests.support import CONSTITUTIONS
from tests.support.fake_engine import FakeEngine

pytestmark = pytest.mark.integration

DEADLINE = 0.4


class Deadline:
    """The part of a gRPC servicer context the judge reads: the time left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def time_remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


def request(text: str, *, chain_of_thought: bool = False) -> Any:
    item = judge_pb2.ComparisonItem(
        conversation=conversation_pb2.Conversation(
            messages=[conversation_pb2.Message(role=conversation_pb2.ROLE_USER, content=text)]
        ),
        response_a=f"{text} / a",
        response_b=f"{text} / b",
    )
    options = judge_pb2.JudgeOptions(constitution_id="harmless", chain_of_thought=chain_of_thought)
    return judge_pb2.CompareRequest(items=[item], options=options, request_id=text)


async def compare(servicer: Any, rpc: str, req: Any) -> list[Any]:
    if rpc == "Compare":
        return list((await servicer.Compare(req, Deadline(DEADLINE))).labels)
    stream = judge_pb2.CompareStreamRequest(items=req.items, options=req.options, request_id=req.request_id)
    return [r.label async for r in servicer.CompareStream(stream, Deadline(DEADLINE))]


@pytest.mark.parametrize(
    ("rpc", "chain_of_thought"), [("Compare", False), ("Compare", True), ("CompareStream", False)]
)
async def test_a_judge_call_past_its_deadline_leaves_the_engine(rpc, chain_of_thought):
    settings = load_settings(constitutions={"directory": CONSTITUTIONS})
    engine = FakeEngine()
    resources = Resources(settings, engine=engine)
    resources.registry()
    servicer = SERVICES["judge"].build(resources, SERVICES["judge"].access(settings))
    budget = servicer.judge._budget
    try:
        engine.gate.clear()  # another caller's batch holds the engine's worker
        hold = ChatRequest(messages=(Message(role="user", content="hold"),), sampling=Sampling(max_tokens=1))
        holder = asyncio.ensure_future(engine.chat([hold]))
        await asyncio.sleep(0.2)
        assert engine.calls == [] and not holder.done()

        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(
                compare(servicer, rpc, request("late", chain_of_thought=chain_of_thought)), 3
            )
        assert time.monotonic() - started < DEADLINE + 1.0  # at its deadline, not the engine's pace
        assert budget.free == budget.size  # the judge let go of its in-flight share

        engine.gate.set()
        await asyncio.wait_for(holder, 5)
        await asyncio.sleep(0.3)
        assert engine.calls == [1]  # the holder's batch only: the late call's work was dropped

        # the judge serves the next call normally
        labels = await asyncio.wait_for(compare(servicer, rpc, request("next")), 5)
        assert len(labels) == 1 and labels[0].response_a == "next / a"
    finally:
        engine.gate.set()
        await resources.close()

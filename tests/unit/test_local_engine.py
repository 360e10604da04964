"""The in-process engine worker: batching of concurrent callers, isolation of bad requests,
deadlines, back-pressure — on a scripted engine."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from charter.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from charter.inference import ChatRequest, Message, Sampling, ScoreRequest

from tests.support.fake_engine import FakeEngine


def chat(text: str, n: int = 1) -> ChatRequest:
    return ChatRequest(messages=(Message(role="user", content=text),), sampling=Sampling(n=n, max_tokens=4))


async def test_results_come_back_in_order() -> None:
    engine = FakeEngine()
    results = await engine.chat([chat("a"), chat("b", n=3)])
    assert [r.completions[0].text for r in results] == ["echo: a", "echo: b"]
    assert len(results[1].completions) == 3
    await engine.close()


async def test_concurrent_callers_share_one_engine_call() -> None:
    engine = FakeEngine(batch_wait_s=0.05)
    engine.gate.clear()  # hold the worker so that every caller is queued before it runs
    tasks = [asyncio.create_task(engine.chat([chat(f"p{i}")])) for i in range(8)]
    await asyncio.sleep(0.1)
    engine.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r[0].completions[0].text for r in results] == [f"echo: p{i}" for i in range(8)]
    assert sum(engine.calls) == 8 and len(engine.calls) <= 2  # not one call per request
    await engine.close()


async def test_mixed_chat_and_scoring_callers_still_batch() -> None:
    """Chat and scoring jobs queued together (a generator and a judge on one engine) run as a few
    batches of each kind: a job set aside for the other kind joins the next batch of its kind with the
    other set-aside jobs (before, each set-aside job started a batch of its own: 100 calls for 100)."""
    engine = FakeEngine(batch_wait_s=0.05)
    engine.gate.clear()
    score = ScoreRequest(messages=(Message(role="user", content="q"),), options=("A", "B"))
    tasks = [
        asyncio.create_task(engine.chat([chat(f"p{i}")]) if i % 2 else engine.score_options([score]))
        for i in range(100)
    ]
    await asyncio.sleep(0.1)
    engine.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r[0].completions[0].text for r in results[1::2]] == [f"echo: p{i}" for i in range(1, 100, 2)]
    assert sum(engine.calls) == 100 and len(engine.calls) <= 6, engine.calls
    await engine.close()


async def test_max_batch_bounds_an_engine_call() -> None:
    engine = FakeEngine(max_batch=3)
    engine.gate.clear()
    tasks = [asyncio.create_task(engine.chat([chat(f"p{i}")])) for i in range(7)]
    await asyncio.sleep(0.05)
    engine.gate.set()
    await asyncio.gather(*tasks)
    assert max(engine.calls) <= 3 and sum(engine.calls) == 7
    await engine.close()


async def test_a_bad_request_fails_only_its_caller() -> None:
    engine = FakeEngine(batch_wait_s=0.05)
    engine.gate.clear()
    good = asyncio.create_task(engine.chat([chat("fine")]))
    bad = asyncio.create_task(engine.chat([chat("too long")]))
    await asyncio.sleep(0.05)
    engine.gate.set()
    assert (await good)[0].completions[0].text == "echo: fine"
    with pytest.raises(InvalidArgument, match="exceeds the model's context"):
        await bad
    await engine.close()


async def test_deadline_raises_deadline_exceeded_without_hanging() -> None:
    engine = FakeEngine(delay=2.0)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="0.2 s deadline"):
        await engine.chat([chat("slow")], timeout=0.2)
    assert time.monotonic() - start < 1.0
    await engine.close()


async def test_queue_limit_is_resource_exhausted() -> None:
    engine = FakeEngine(max_pending=2)
    engine.gate.clear()
    first = asyncio.create_task(engine.chat([chat("a"), chat("b")]))
    await asyncio.sleep(0.02)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await engine.chat([chat("c")])
    engine.gate.set()
    await first
    await engine.close()


async def test_stream_yields_every_request_once() -> None:
    engine = FakeEngine()
    seen = {i: r.completions[0].text async for i, r in engine.chat_stream([chat(f"s{i}") for i in range(5)])}
    assert seen == {i: f"echo: s{i}" for i in range(5)}
    await engine.close()


async def test_scores_are_normalised_per_request() -> None:
    engine = FakeEngine()
    req = ScoreRequest(messages=(Message(role="user", content="q"),), options=("A", "B", "C"))
    [scores] = await engine.score_options([req])
    assert math.isclose(sum(scores.probs), 1.0)
    assert scores.probs[0] > scores.probs[1] > scores.probs[2]
    assert scores.logprobs == (-1.0, -2.0, -3.0)
    await engine.close()


async def test_closed_engine_is_unavailable() -> None:
    engine = FakeEngine()
    await engine.close()
    with pytest.raises(Unavailable, match="closed"):
        await engine.chat([chat("x")])


class SlowToFinish(FakeEngine):
    """The worker lingers after each batch (as a busy thread may), and counts engine shutdowns."""

    def __init__(self, **kwargs) -> None:
        self.shutdowns = 0
        super().__init__(**kwargs)

    def _run(self, batch) -> None:
        super()._run(batch)
        time.sleep(0.3)

    def _shutdown(self) -> None:
        self.shutdowns += 1


async def test_a_finished_callers_room_is_free_when_it_wakes() -> None:
    """A caller that fills the queue and submits again as soon as its result comes (the judge within
    its budget) is not refused: its finished requests left the pending total before it woke. Before,
    the worker booked them only after the callers woke, and the resubmission was RESOURCE_EXHAUSTED."""
    engine = SlowToFinish(max_pending=2)
    try:
        for _ in range(3):
            await engine.chat([chat("a"), chat("b")], timeout=5)
            assert engine._pending == 0
        assert engine.shutdowns == 0  # booking never stops the engine; only close does
    finally:
        await engine.close()
    assert engine.shutdowns == 1

"""The judge on a scripted engine (no model): large calls stay within the engine's queue, bad items
become labels with a status, transient engine failures fail the call."""

from __future__ import annotations

import pytest
from charter.constitution import load_constitution
from charter.constitution.registry import LoadedConstitution
from charter.core.errors import InvalidArgument, ResourceExhausted
from charter.inference.types import Message
from charter.judge.core import Judge, JudgeConfig, Pair

from tests.support import CONSTITUTIONS
from tests.support.fake_engine import FakeEngine


def harmless() -> LoadedConstitution:
    c = load_constitution(CONSTITUTIONS / "harmless.yaml")
    return LoadedConstitution(c, c.digest, CONSTITUTIONS / "harmless.yaml", 0.0)


def pairs(n: int) -> list[Pair]:
    return [Pair((Message(role="user", content=f"question {i}"),), f"yes {i}", f"no {i}") for i in range(n)]


async def test_a_call_larger_than_the_engine_queue_is_fed_in_turns() -> None:
    engine = FakeEngine(max_pending=64)  # a finished batch counts until the worker books it: 2 x 32
    try:
        config = JudgeConfig(constitution=harmless(), principles_per_label=2, seed=1)  # 4 requests a pair
        labels = await Judge(engine, max_requests_in_flight=32).label(pairs(300), config)
        assert len(labels) == 300 and {label.status for label in labels} == {"tie"}
        # the fake always prefers the first slot (log-probs -1 vs -2): pure position bias debiases to a tie
        assert labels[0].verdict.p_a == pytest.approx(0.5)
        with pytest.raises(ResourceExhausted):  # without the budget the same call overflows the queue
            await Judge(engine, max_requests_in_flight=10_000).label(pairs(300), config)
    finally:
        await engine.close()


async def test_an_item_the_engine_rejects_is_invalid_input_and_the_rest_are_labelled() -> None:
    class Picky(FakeEngine):
        def _prepare_scores(self, requests):
            if any("too long" in r.messages[-2].content for r in requests):
                raise InvalidArgument("scoring prompt 0 is 999 tokens; it exceeds the model's context")
            return super()._prepare_scores(requests)

    engine = Picky()
    try:
        items = [*pairs(2), Pair((Message(role="user", content="too long"),), "a", "b")]
        labels = await Judge(engine).label(items, JudgeConfig(constitution=harmless(), seed=0))
        assert [label.status for label in labels] == ["tie", "tie", "invalid_input"]
        assert "exceeds the model's context" in labels[2].detail and labels[2].id.startswith("lbl_")
    finally:
        await engine.close()

"""Load (issue 18): 50 concurrent clients on the generator and the judge — a real `CharterServer`, real
gRPC, the catalog's servicers on the scripted engine (the real `LocalEngine` worker and queue under it).

Each client has its own `grpc.aio` channel, on its own connection (`grpc.use_local_subchannel_pool`:
without it gRPC shares one subchannel, so one TCP connection, between channels of the same target and
arguments in a process): 50 clients are 50 HTTP/2 connections to the server, as 50 pipeline workers
would be, not 50 streams multiplexed on one.

Proved: every call succeeds under the limits, replies correct and the engine batching them; past
`server.max_concurrent_rpcs` a call is RESOURCE_EXHAUSTED at once and the server recovers; a short
deadline ends the call DEADLINE_EXCEEDED at the deadline, the server lets go of it (lease, judge budget)
and the engine never runs its work; the engine's queue is bounded (`inference.max_pending`:
RESOURCE_EXHAUSTED past it) and the judge keeps at most `judge.max_requests_in_flight` scoring requests
in it (the rest wait in the judge).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings, load_settings
from charter_proto.common.v1 import conversation_pb2
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import ROOT
from tests.support.fake_engine import FakeEngine

pytestmark = pytest.mark.integration

CLIENTS = 50
LONG = 30.0  # the deadline of calls meant to succeed
FAST = 1.0  # a refusal "at once": well under any deadline the test gives
USER = conversation_pb2.ROLE_USER
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Served:
    port: int
    server: CharterServer
    engine: FakeEngine
    generator: Any  # GeneratorServicer (its policy counts the calls holding a lease)
    judge: Any  # JudgeServicer (its judge's budget counts the scoring requests in flight)

    def generating(self) -> int:
        return self.generator.policy.in_flight

    def judge_budget_used(self) -> int:
        budget = self.judge.judge._budget
        return budget.size - budget.free


@contextlib.asynccontextmanager
async def serve(
    *, delay: float = 0.0, max_concurrent_rpcs: int | None = 1024, max_pending: int = 1024,
    judge_in_flight: int = 512, health_port: int | None = None,
) -> AsyncIterator[Served]:  # fmt: skip
    settings = load_settings(
        constitutions={"directory": str(ROOT / "constitutions")},
        judge={"max_requests_in_flight": judge_in_flight},
    )
    engine = FakeEngine(delay, max_pending=max_pending)
    resources = Resources(settings, engine=engine)
    servicers, registrations = {}, []
    for name in ("generator", "judge"):  # as SERVICES[name].registration_for, keeping the servicer
        spec = SERVICES[name]
        if spec.uses_constitutions:
            resources.registry()
        access = spec.access(settings)
        servicers[name] = spec.build(resources, access)
        registrations.append(spec.registration(servicers[name], access))
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0,
                       max_concurrent_rpcs=max_concurrent_rpcs, health_port=health_port),
        registrations,
    )  # fmt: skip
    port = await server.start()
    try:
        yield Served(port, server, engine, servicers["generator"], servicers["judge"])
    finally:
        engine.gate.set()  # a held worker would keep close() waiting
        await server.stop(0)
        await resources.close()


@contextlib.asynccontextmanager
async def channels(port: int, count: int = CLIENTS) -> AsyncIterator[list[grpc.aio.Channel]]:
    """One channel per client, each on its own connection (a local subchannel pool)."""
    opened = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count)
    ]
    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 10) for c in opened))
        yield opened
    finally:
        await asyncio.gather(*(c.close() for c in opened))


async def generate(channel: grpc.aio.Channel, text: str, timeout: float = LONG) -> str:
    """One prompt, one sample: the completion's text (the scripted engine echoes the prompt)."""
    request = generator_pb2.GenerateRequest(
        prompts=[conversation_pb2.Conversation(id=text, messages=[conversation_pb2.Message(role=USER, content=text)])]
    )  # fmt: skip
    replies = [
        r async for r in generator_pb2_grpc.GeneratorServiceStub(channel).Generate(request, timeout=timeout)
    ]
    assert [(r.prompt_index, r.conversation_id, r.sample_index) for r in replies] == [(0, text, 0)]
    return replies[0].completion.text


async def compare(channel: grpc.aio.Channel, text: str, timeout: float = LONG) -> Any:
    """One pair judged by `harmless`; the label, checked against what the scripted engine scores
    (option A -1, option B -2 in both orders: each order prefers its first response, so a tie)."""
    item = judge_pb2.ComparisonItem(
        conversation=conversation_pb2.Conversation(messages=[conversation_pb2.Message(role=USER, content=text)]),
        response_a=f"{text} / a", response_b=f"{text} / b",
    )  # fmt: skip
    request = judge_pb2.CompareRequest(items=[item], request_id=text)
    request.options.constitution_id = "harmless"
    reply = await judge_pb2_grpc.JudgeServiceStub(channel).Compare(request, timeout=timeout)
    [label] = reply.labels
    assert (label.response_a, label.response_b) == (item.response_a, item.response_b)
    assert label.conversation.messages[0].content == text
    assert sorted(s.swapped for s in label.scores) == [False, True]
    assert all(list(s.option_logprobs) == [-1.0, -2.0] for s in label.scores)
    assert label.p_a == pytest.approx(0.5) and not label.swap_consistent
    return label


async def call(channel: grpc.aio.Channel, kind: str, text: str, timeout: float = LONG) -> None:
    if kind == "generate":
        assert await generate(channel, text, timeout) == f"echo: {text}"
    else:
        await compare(channel, text, timeout)


async def outcome(coro: Any) -> tuple[grpc.StatusCode, float, str]:
    """A call's status code, its seconds, and its error details."""
    started = time.perf_counter()
    try:
        await coro
    except grpc.aio.AioRpcError as err:
        return err.code(), time.perf_counter() - started, err.details() or ""
    return grpc.StatusCode.OK, time.perf_counter() - started, ""


async def until(condition: Any, within: float = 5.0) -> None:
    """Wait for `condition` (the server's state), failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {within} s: {inspect.getsource(condition)}"
        await asyncio.sleep(0.01)


async def health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return (await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)).status


async def hold(s: Served, channel: grpc.aio.Channel) -> asyncio.Task[Any]:
    """Hold the engine: one generate call, in the worker and stopped at the gate; every job after it
    waits in the engine's queue until the gate opens. Returns the call's task (its `outcome`)."""
    s.engine.gate.clear()
    holder = asyncio.create_task(outcome(call(channel, "generate", "holder")))
    await until(lambda: s.engine._pending == 1 and s.engine._queue.empty())  # the worker took it
    await asyncio.sleep(2 * s.engine.batch_wait_s)  # and waits at the gate, no more batching
    return holder


def kinds(count: int = CLIENTS) -> list[str]:
    return ["generate" if i % 2 == 0 else "compare" for i in range(count)]


async def test_fifty_clients_all_succeed_and_the_engine_batches_them() -> None:
    async with serve(delay=0.01) as s, channels(s.port) as chans:
        rounds = 4

        async def client(i: int) -> None:
            for r in range(rounds):  # alternate RPCs so both services are loaded all along
                await call(chans[i], ("generate", "compare")[(i + r) % 2], f"client {i} call {r}")

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        seconds = time.perf_counter() - started
        calls = CLIENTS * rounds
        # every generate is one chat request, every compare two scoring requests (both orders)
        assert sum(s.engine.calls) == calls // 2 + 2 * (calls // 2)
        # concurrent calls shared engine batches: one larger than any single call's (2 requests)
        assert max(s.engine.calls) > 2, s.engine.calls
        assert len(s.engine.calls) < calls, s.engine.calls
        assert seconds < 20, seconds
        await until(lambda: s.generating() == 0 and s.judge_budget_used() == 0)


async def test_past_max_concurrent_rpcs_calls_are_refused_at_once_and_the_server_recovers() -> None:
    limit = 8
    async with serve(max_concurrent_rpcs=limit, health_port=0) as s, channels(s.port) as chans:
        held = [await hold(s, chans[0])]  # the engine holds every call it gets
        held += [
            asyncio.create_task(outcome(call(chans[i], kind, f"held {i}")))
            for i, kind in enumerate(kinds(limit))
            if i > 0
        ]
        await until(lambda: s.generating() == limit // 2 and s.judge_budget_used() == 2 * (limit // 2))
        extra = await asyncio.gather(
            *(outcome(call(chans[i], kind, f"extra {i}")) for i, kind in enumerate(kinds()) if i >= limit)
        )
        assert Counter(code for code, _, _ in extra) == {grpc.StatusCode.RESOURCE_EXHAUSTED: CLIENTS - limit}
        assert max(seconds for _, seconds, _ in extra) < FAST  # refused, not queued until a deadline
        # a health check is a call too: refused on the full main port, so probes belong on
        # `server.health_port`, a server of its own, which answers while the main port is full
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await health(s.port)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await health(s.server.health_port) == SERVING
        assert not any(t.done() for t in held)
        s.engine.gate.set()
        assert [code for code, _, _ in await asyncio.gather(*held)] == [grpc.StatusCode.OK] * limit

        # recovered: the refused clients retry (seeded jitter) until each has succeeded once
        rng = random.Random(18)
        attempts: Counter[int] = Counter()

        async def retry(i: int, kind: str) -> None:
            while True:
                attempts[i] += 1
                code, _, details = await outcome(call(chans[i], kind, f"retry {i}"))
                if code == grpc.StatusCode.OK:
                    return
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
                await asyncio.sleep(rng.uniform(0.01, 0.05))

        await asyncio.wait_for(
            asyncio.gather(*(retry(i, kind) for i, kind in enumerate(kinds()) if i >= limit)), 20
        )
        assert len(attempts) == CLIENTS - limit
        assert await health(s.port) == SERVING


async def test_short_deadlines_end_at_the_deadline_and_the_engine_never_runs_their_work() -> None:
    deadline = 0.3
    async with serve() as s, channels(s.port) as chans:
        holder = await hold(s, chans[0])
        results = await asyncio.gather(
            *(outcome(call(chans[i], kind, f"short {i}", deadline)) for i, kind in enumerate(kinds()))
        )
        assert Counter(code for code, _, _ in results) == {grpc.StatusCode.DEADLINE_EXCEEDED: CLIENTS}
        assert max(seconds for _, seconds, _ in results) < deadline + FAST
        # the server let go of them too: no lease on the policy, no judge budget held
        await until(lambda: s.generating() == 1 and s.judge_budget_used() == 0, within=2.0)
        assert not holder.done()
        s.engine.gate.set()
        assert (await holder)[0] == grpc.StatusCode.OK
        await until(lambda: s.engine._pending == 0)
        assert s.engine.calls == [1]  # only the holder's batch: the expired calls' work was dropped
        assert await health(s.port) == SERVING
        after = await asyncio.gather(
            *(outcome(call(chans[i], k, f"after {i}")) for i, k in enumerate(kinds()))
        )
        assert [code for code, _, _ in after] == [grpc.StatusCode.OK] * CLIENTS


async def test_the_engine_queue_is_bounded_and_the_judge_keeps_within_its_share() -> None:
    max_pending, judge_in_flight = 16, 8
    async with (
        serve(max_pending=max_pending, judge_in_flight=judge_in_flight) as s,
        channels(s.port) as chans,
    ):
        holder = await hold(s, chans[0])
        # the judge: 24 calls (48 scoring requests) wait for its budget instead of filling the queue
        judged = [
            asyncio.create_task(outcome(call(chans[i], "compare", f"judged {i}"))) for i in range(1, 25)
        ]
        await until(lambda: s.judge_budget_used() == judge_in_flight)
        await asyncio.sleep(0.2)  # time for any call that would overshoot the budget to do so
        assert s.judge_budget_used() == judge_in_flight
        assert s.engine._pending == 1 + judge_in_flight
        assert not any(t.done() for t in judged)
        # the generator: the queue's free places go to the first calls, the rest are refused at once
        free = max_pending - 1 - judge_in_flight
        generated = [
            asyncio.create_task(outcome(call(chans[i], "generate", f"gen {i}"))) for i in range(25, 50)
        ]
        await until(lambda: sum(t.done() for t in generated) == len(generated) - free)
        refused = [t.result() for t in generated if t.done()]
        assert len(refused) == len(generated) - free
        assert {code for code, _, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("engine queue is full" in details for _, _, details in refused)
        assert max(seconds for _, seconds, _ in refused) < FAST
        assert s.engine._pending == max_pending
        s.engine.gate.set()
        assert (await holder)[0] == grpc.StatusCode.OK
        # every judge call succeeds: a judge resubmitting at once finds the room its finished batch left
        # (the engine books a batch before its callers wake)
        assert {r[0] for r in await asyncio.gather(*judged)} == {grpc.StatusCode.OK}
        waited = [t.result() for t in generated if t.result()[0] != grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert [code for code, _, _ in waited] == [grpc.StatusCode.OK] * free
        await until(lambda: s.engine._pending == 0 and s.judge_budget_used() == 0)

"""The review service through a real gRPC server on port 0, on SQLite and PostgreSQL: tokens and
roles, submit/claim/decide/release, oversized payloads, the following stream and its wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from charter.app.catalog import SERVICES
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings, load_settings
from charter_proto.review.v1 import review_pb2 as rv
from charter_proto.review.v1 import review_pb2_grpc

from tests.support.review import hh_labels

pytestmark = pytest.mark.integration

TOKENS = [
    {"name": "pipeline", "role": "service", "token": "svc-token"},
    {"name": "alice", "role": "reviewer", "token": "alice-token"},
    {"name": "bob", "role": "reviewer", "token": "bob-token"},
    {"name": "root", "role": "admin", "token": "admin-token"},
]


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


SERVICE, ALICE, BOB, ADMIN = (auth(t["token"]) for t in TOKENS)


@pytest.fixture
async def review(ledger_url: str) -> AsyncIterator[tuple[review_pb2_grpc.ReviewServiceStub, CharterServer]]:
    settings = load_settings(
        review={
            "database_url": ledger_url,
            "tokens": TOKENS,
            "web_port": None,
            "poll_seconds": 0.05,
            "max_label_bytes": 8192,
            "routing": {"audit_rate": 0.0},
        }
    )
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None, max_message_mb=1),
        [SERVICES["review"].registration_for_settings(settings)],
    )
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield review_pb2_grpc.ReviewServiceStub(channel), server
    await server.stop(0)


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


async def test_tokens_and_roles(review):
    stub, _ = review
    submit = rv.SubmitRequest(labels=hh_labels(2, confidence=0.1))
    assert await code_of(stub.Submit(submit)) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(stub.Submit(submit, metadata=auth("wrong"))) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        await code_of(stub.Claim(rv.ClaimRequest(), metadata=(("authorization", "Basic x"),)))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert await code_of(stub.Submit(submit, metadata=ALICE)) == grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(stub.Claim(rv.ClaimRequest(), metadata=SERVICE)) == grpc.StatusCode.PERMISSION_DENIED
    stream = stub.StreamLabels(rv.StreamLabelsRequest(), metadata=BOB)
    assert await code_of(stream.read()) == grpc.StatusCode.PERMISSION_DENIED
    await stub.Submit(submit, metadata=SERVICE)
    assert (await stub.Claim(rv.ClaimRequest(), metadata=ADMIN)).item.item_id  # admins may do anything
    for who in (SERVICE, ALICE, ADMIN):
        assert (await stub.Stats(rv.StatsRequest(), metadata=who)).labels_total == 2


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_review_round_trip_and_errors(review):
    stub, _ = review
    decisions_before = sample("charter_review_decisions_total", choice="b")
    queued_before = sample("charter_review_labels_total", route="human_review", reason="uncertain")
    result = await stub.Submit(rv.SubmitRequest(labels=hh_labels(3, confidence=0.1)), metadata=SERVICE)
    assert [r.route for r in result.results] == [rv.ROUTE_HUMAN_REVIEW] * 3
    again = await stub.Submit(rv.SubmitRequest(labels=hh_labels(3, confidence=0.1)), metadata=SERVICE)
    assert all(r.duplicate for r in again.results)
    claim = await stub.Claim(rv.ClaimRequest(lease_seconds=30), metadata=ALICE)
    item = claim.item
    assert claim.queue_depth == 2 and item.lease_id and item.label.response_a
    other = (await stub.Claim(rv.ClaimRequest(), metadata=BOB)).item
    assert other.item_id != item.item_id
    bad = rv.DecideRequest(item_id=item.item_id, lease_id=item.lease_id, choice=rv.HUMAN_CHOICE_A)
    assert await code_of(stub.Decide(bad, metadata=BOB)) == grpc.StatusCode.FAILED_PRECONDITION
    unknown = rv.DecideRequest(item_id=item.item_id, lease_id=item.lease_id, choice=17)
    assert await code_of(stub.Decide(unknown, metadata=ALICE)) == grpc.StatusCode.INVALID_ARGUMENT
    too_long = rv.ClaimRequest(lease_seconds=10**6)
    assert await code_of(stub.Claim(too_long, metadata=ALICE)) == grpc.StatusCode.INVALID_ARGUMENT
    decided = await stub.Decide(
        rv.DecideRequest(
            item_id=item.item_id, lease_id=item.lease_id, choice=rv.HUMAN_CHOICE_B, comment="B is safer"
        ),
        metadata=ALICE,
    )
    assert decided.decision.reviewer == "alice" and decided.accepted.source == rv.LABEL_SOURCE_HUMAN
    assert await code_of(stub.Decide(bad, metadata=ALICE)) == grpc.StatusCode.FAILED_PRECONDITION  # twice
    await stub.Release(rv.ReleaseRequest(item_id=other.item_id, lease_id=other.lease_id), metadata=BOB)
    stats = await stub.Stats(rv.StatsRequest(), metadata=ADMIN)
    assert (stats.human_accepted, stats.queue_depth, stats.claimed) == (1, 2, 0)
    assert sample("charter_review_decisions_total", choice="b") == decisions_before + 1
    assert (
        sample("charter_review_labels_total", route="human_review", reason="uncertain") == queued_before + 3
    )
    assert sample("charter_review_queue_depth") == 2
    assert stats.reviewers[0].reviewer == "alice"


async def test_oversized_payloads_are_rejected(review):
    stub, _ = review
    label = hh_labels(1, confidence=0.9)[0]
    label.response_a = "x" * 9000  # over review.max_label_bytes
    assert (
        await code_of(stub.Submit(rv.SubmitRequest(labels=[label]), metadata=SERVICE))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    label.response_a = "x" * (2 * 1024 * 1024)  # over the server's message limit (1 MiB here)
    assert (
        await code_of(stub.Submit(rv.SubmitRequest(labels=[label]), metadata=SERVICE))
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert (await stub.Stats(rv.StatsRequest(), metadata=SERVICE)).labels_total == 0


async def test_following_stream_gets_backlog_then_live_labels_exactly_once(review):
    stub, _ = review
    batch = hh_labels(30, confidence=0.9)
    await stub.Submit(rv.SubmitRequest(labels=batch[:10]), metadata=SERVICE)
    seen: list[int] = []
    call = stub.StreamLabels(rv.StreamLabelsRequest(follow=True), metadata=SERVICE)

    async def consume(n: int) -> None:
        async for response in call:
            assert response.labels and response.cursor.sequence == response.labels[-1].sequence
            seen.extend(label.sequence for label in response.labels)
            if len(seen) == n:
                return

    first = asyncio.create_task(consume(10))
    await asyncio.wait_for(first, 10)
    second = asyncio.create_task(consume(25))
    await stub.Submit(rv.SubmitRequest(labels=batch[10:25]), metadata=SERVICE)  # live
    await asyncio.wait_for(second, 10)
    call.cancel()
    assert seen == list(range(1, 26))
    resumed = stub.StreamLabels(
        rv.StreamLabelsRequest(from_cursor=rv.LabelCursor(sequence=20), max_labels_per_message=2),
        metadata=SERVICE,
    )
    messages = [[label.sequence for label in r.labels] async for r in resumed]
    assert messages == [[21, 22], [23, 24], [25]]


async def test_following_streams_end_with_unavailable_when_the_server_drains(review):
    stub, server = review
    call = stub.StreamLabels(rv.StreamLabelsRequest(follow=True), metadata=SERVICE)
    await asyncio.sleep(0.3)
    stopping = asyncio.create_task(server.stop(30))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.wait_for(stopping, 10)  # the drain did not wait out its 30 s grace


async def start_replica(url: str, poll_seconds: float) -> CharterServer:
    settings = load_settings(
        review={"database_url": url, "tokens": TOKENS, "web_port": None, "poll_seconds": poll_seconds}
    )
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None),
        [SERVICES["review"].registration_for_settings(settings)],
    )
    await server.start()
    return server


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_a_label_accepted_on_one_replica_wakes_followers_on_another(backend, tmp_path):
    """PostgreSQL: LISTEN/NOTIFY wakes the other replica at once (its polling is set to 30 s here);
    SQLite: the other process's writes are found by polling."""
    from tests.support.review import postgres_database

    context = (
        postgres_database()
        if backend == "postgresql"
        else contextlib.nullcontext(f"sqlite:///{tmp_path}/l.db")
    )
    with context as url:
        writer = await start_replica(url, 30.0)
        follower = await start_replica(url, 30.0 if backend == "postgresql" else 0.05)
        try:
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{writer.port}") as a,
                grpc.aio.insecure_channel(f"127.0.0.1:{follower.port}") as b,
            ):
                call = review_pb2_grpc.ReviewServiceStub(b).StreamLabels(
                    rv.StreamLabelsRequest(follow=True), metadata=SERVICE
                )
                await asyncio.sleep(0.5)  # the follower has read the (empty) stream and is waiting
                labels = hh_labels(5, confidence=0.9)
                started = asyncio.get_running_loop().time()
                await review_pb2_grpc.ReviewServiceStub(a).Submit(
                    rv.SubmitRequest(labels=labels), metadata=SERVICE
                )
                got: list[str] = []
                async with asyncio.timeout(5):
                    async for response in call:
                        got.extend(label.label.id for label in response.labels)
                        if len(got) == 5:
                            break
                waited = asyncio.get_running_loop().time() - started
                call.cancel()
                assert got == [label.id for label in labels]
                assert waited < 2.0  # far below the 30 s poll: woken by NOTIFY (or the 50 ms poll)
        finally:
            await writer.stop(0)
            await follower.stop(0)


async def test_a_consumer_cancelling_mid_stream_does_not_take_the_server_down(review):
    """grpcio's aio `context.peer()` crashed the process once a client had cancelled a stream in the
    middle of a send; the interceptor now reads the peer when the call starts."""
    stub, _ = review
    await stub.Submit(rv.SubmitRequest(labels=hh_labels(600, confidence=0.9)), metadata=SERVICE)
    for _ in range(3):
        call = stub.StreamLabels(rv.StreamLabelsRequest(max_labels_per_message=1), metadata=SERVICE)
        received = 0
        async for _response in call:
            received += 1
            if received == 5:
                call.cancel()
                break
        await asyncio.sleep(0.2)
    assert (await stub.Stats(rv.StatsRequest(), metadata=SERVICE)).labels_total == 600


async def test_a_cursor_past_the_signed_64_bit_range_is_invalid_argument(review):
    # uint64 in the proto, a signed BIGINT / INTEGER in the ledger: past 2^63 - 1 it is the caller's
    # mistake, not the database's error (INTERNAL before)
    stub, server = review
    await stub.Submit(rv.SubmitRequest(labels=hh_labels(2, confidence=0.9)), metadata=SERVICE)
    for sequence in (2**63, 2**64 - 1):
        request = rv.StreamLabelsRequest(from_cursor=rv.LabelCursor(sequence=sequence))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.StreamLabels(request, metadata=SERVICE):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "from_cursor.sequence" in (err.value.details() or "")
    last = rv.StreamLabelsRequest(from_cursor=rv.LabelCursor(sequence=2**63 - 1))
    assert [m async for m in stub.StreamLabels(last, metadata=SERVICE)] == []  # the largest is fine


async def test_a_database_outage_is_unavailable_and_the_service_recovers():
    # PostgreSQL refusing connections (as while it restarts) after the service opened its ledger: the
    # caller gets UNAVAILABLE, which clients retry, not INTERNAL, and health says NOT_SERVING; when it
    # accepts connections again, calls succeed and health is SERVING again
    import psycopg
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.support.review import POSTGRES_ADMIN_URL, postgres_database

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        settings = load_settings(review={"database_url": url, "tokens": TOKENS, "web_port": None})
        registration = SERVICES["review"].registration_for_settings(settings)
        server = CharterServer(
            ServerSettings(host="127.0.0.1", port=0, metrics_port=None, health_probe_seconds=0.2),
            [registration],
        )
        port = await server.start()
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)

        async def health_of(health, service: str = "") -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

        async def becomes(health, status: int) -> None:
            for _ in range(100):
                if await health_of(health) == status and await health_of(health, registration.name) == status:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"health did not become {status}")

        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = review_pb2_grpc.ReviewServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                await stub.Submit(rv.SubmitRequest(labels=hh_labels(3, confidence=0.9)), metadata=SERVICE)
                await becomes(health, serving)
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                )
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Stats(rv.StatsRequest(), metadata=SERVICE)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                assert "database" in (err.value.details() or "")
                await becomes(health, not_serving)
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await becomes(health, serving)
                assert (await stub.Stats(rv.StatsRequest(), metadata=SERVICE)).labels_total == 3
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.close()
            await server.stop(0)


async def test_stream_messages_are_bounded_by_bytes_for_any_client(ledger_url):
    # 30 labels of ~200 KB: 100 labels a message would be 6 MB, past gRPC's default 4 MiB receive
    # limit of a client that is not Charter's (RESOURCE_EXHAUSTED before): bytes bound messages too
    settings = load_settings(
        review={
            "database_url": ledger_url,
            "tokens": TOKENS,
            "web_port": None,
            "max_label_bytes": 262_144,
            "routing": {"audit_rate": 0.0},
        }
    )
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None),
        [SERVICES["review"].registration_for_settings(settings)],
    )
    port = await server.start()
    try:
        labels = hh_labels(30, confidence=0.9)
        for i, label in enumerate(labels):
            label.response_a = f"{i} " + "x" * 200_000
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:  # gRPC's default limits
            stub = review_pb2_grpc.ReviewServiceStub(channel)
            for start in range(0, 30, 10):
                await stub.Submit(rv.SubmitRequest(labels=labels[start : start + 10]), metadata=SERVICE)
            request = rv.StreamLabelsRequest(max_labels_per_message=100)
            messages = [m async for m in stub.StreamLabels(request, metadata=SERVICE)]
        got = [label for m in messages for label in m.labels]
        assert [a.sequence for a in got] == sorted(a.sequence for a in got) and len(got) == 30
        assert len(messages) >= 2 and all(m.ByteSize() <= 4 * 1024 * 1024 for m in messages)
        assert all(m.cursor.sequence == m.labels[-1].sequence for m in messages)
    finally:
        await server.stop(0)


async def test_a_consumers_stream_lag_is_exported_while_it_reads(ledger_url):
    """`charter_review_stream_lag{consumer}`: how far behind the ledger's last accepted label a
    consumer's stream is after each page; 0 once caught up; gone when its stream ends."""
    from prometheus_client import REGISTRY

    settings = load_settings(
        review={"database_url": ledger_url, "tokens": TOKENS, "web_port": None, "poll_seconds": 0.05,
                "stream_batch": 4, "routing": {"audit_rate": 0.0}}
    )  # fmt: skip
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None),
        [SERVICES["review"].registration_for_settings(settings)],
    )
    port = await server.start()

    def lag() -> float | None:
        return REGISTRY.get_sample_value("charter_review_stream_lag", {"consumer": "pipeline"})

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = review_pb2_grpc.ReviewServiceStub(channel)
            await stub.Submit(rv.SubmitRequest(labels=hh_labels(20, confidence=0.9)), metadata=SERVICE)
            call = stub.StreamLabels(
                rv.StreamLabelsRequest(follow=True, max_labels_per_message=4), metadata=SERVICE
            )
            first = await call.read()
            assert [x.sequence for x in first.labels] == [1, 2, 3, 4] and lag() == 16  # 20 accepted, 4 sent
            seen = 4
            while seen < 20:
                seen += len((await call.read()).labels)
            for _ in range(100):  # the last (short) page says caught up
                if lag() == 0:
                    break
                await asyncio.sleep(0.02)
            assert lag() == 0
            call.cancel()
            for _ in range(100):
                if lag() is None:
                    break
                await asyncio.sleep(0.02)
            assert lag() is None  # a consumer that has gone is not behind
    finally:
        await server.stop(0)

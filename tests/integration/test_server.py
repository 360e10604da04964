"""A real grpc.aio server on port 0, real clients: health, reflection, interceptor, metrics."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
from charter.app.catalog import SERVICES
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
from charter_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from structlog.testing import capture_logs

from tests.support.servicers import ScriptedJudge

pytestmark = pytest.mark.integration


@pytest.fixture
async def server() -> AsyncIterator[CharterServer]:
    settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=0, drain_seconds=1)
    srv = CharterServer(
        settings, [SERVICES["judge"].registration(ScriptedJudge()), SERVICES["trainer"].registration()]
    )
    await srv.start()
    yield srv
    await srv.stop(0)


@pytest.fixture
async def channel(server: CharterServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


async def test_health_reports_serving_overall_and_per_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICES["judge"].full_name, SERVICES["trainer"].full_name):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_flips_when_a_backend_dies(server: CharterServer, channel: grpc.aio.Channel) -> None:
    name = SERVICES["judge"].full_name
    await server.set_serving(name, False)
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_the_services(server: CharterServer) -> None:
    def discover() -> tuple[set[str], str]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:  # the stock blocking client
            db = ProtoReflectionDescriptorDatabase(ch)
            return set(db.get_services()), db.FindFileContainingSymbol(
                "charter.common.v1.PreferenceLabel"
            ).name

    services, label_file = await asyncio.to_thread(discover)
    assert {
        "charter.judge.v1.JudgeService",
        "charter.trainer.v1.TrainerService",
        "grpc.health.v1.Health",
    } <= services
    assert label_file == "charter/common/v1/label.proto"  # shared messages are discoverable too


async def test_ok_call_logs_one_summary_line_with_request_id(channel: grpc.aio.Channel) -> None:
    stub = judge_pb2_grpc.JudgeServiceStub(channel)
    with capture_logs() as logs:
        call = stub.Compare(
            judge_pb2.CompareRequest(request_id="ok"), metadata=(("x-request-id", "req-123"),)
        )
        reply = await call
        trailing = dict(await call.trailing_metadata())
    assert reply.labels[0].p_a == 0.75
    assert trailing["x-request-id"] == "req-123"
    lines = [e for e in logs if e["event"] == "rpc.completed"]
    assert len(lines) == 1
    assert lines[0]["rpc"] == "charter.judge.v1.JudgeService/Compare"
    assert lines[0]["code"] == "OK" and lines[0]["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("script", "code", "detail"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "items: at least one item is required"),
        ("unavailable", grpc.StatusCode.UNAVAILABLE, "engine is restarting; retry"),
    ],
)
async def test_charter_errors_map_to_status_codes(
    channel: grpc.aio.Channel, script: str, code, detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await judge_pb2_grpc.JudgeServiceStub(channel).Compare(judge_pb2.CompareRequest(request_id=script))
    assert info.value.code() == code
    assert info.value.details() == detail


async def test_a_bug_is_internal_with_request_id_and_logged_once(channel: grpc.aio.Channel) -> None:
    with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as info:
        await judge_pb2_grpc.JudgeServiceStub(channel).Compare(
            judge_pb2.CompareRequest(request_id="crash"), metadata=(("x-request-id", "req-crash"),)
        )
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error (request id req-crash)"
    assert "a bug" not in info.value.details()  # internals stay in the log
    failed = [e for e in logs if e["event"] == "rpc.failed"]
    assert len(failed) == 1 and failed[0]["exc_info"] is True


async def test_deadline_is_honoured(channel: grpc.aio.Channel) -> None:
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await judge_pb2_grpc.JudgeServiceStub(channel).Compare(
            judge_pb2.CompareRequest(request_id="slow"), timeout=0.3
        )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2


async def test_unbuilt_service_answers_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer_pb2_grpc.TrainerServiceStub(channel).GetRun(trainer_pb2.GetRunRequest(run_id="x"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in trainer_pb2_grpc.TrainerServiceStub(channel).WatchRun(
            trainer_pb2.WatchRunRequest(run_id="x")
        ):
            pass
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_metrics_endpoint_counts_rpcs(server: CharterServer, channel: grpc.aio.Channel) -> None:
    stub = judge_pb2_grpc.JudgeServiceStub(channel)
    await stub.Compare(judge_pb2.CompareRequest(request_id="ok"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Compare(judge_pb2.CompareRequest(request_id="invalid"))
    assert server.metrics is not None
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics.port}/metrics", timeout=5).read().decode()
    )
    assert 'charter_rpc_total{code="OK",method="Compare",service="charter.judge.v1.JudgeService"}' in body
    assert 'code="INVALID_ARGUMENT",method="Compare"' in body
    assert "charter_rpc_duration_seconds_bucket" in body

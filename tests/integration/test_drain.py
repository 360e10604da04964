"""SIGTERM drains: in-flight calls finish, new calls are refused, the process exits cleanly."""

from __future__ import annotations

import signal
import sys
import threading
import time

import grpc
import pytest
from charter_proto.common.v1 import conversation_pb2
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import ROOT, subprocess_env
from tests.support.process import LoggedProcess

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_calls() -> None:
    server = LoggedProcess(
        [sys.executable, "-m", "tests.support.slow_server"], cwd=ROOT, env=subprocess_env()
    )
    try:
        port = server.wait_for("server.started")["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (
                health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            )

            prompts = [conversation_pb2.Conversation(id=f"p{i}") for i in range(4)]  # 4 x 0.5 s
            stream = generator_pb2_grpc.GeneratorServiceStub(channel).Generate(
                generator_pb2.GenerateRequest(prompts=prompts), timeout=30
            )
            received: list[str] = []
            done = threading.Event()

            def consume() -> None:
                for reply in stream:
                    received.append(reply.conversation_id)
                done.set()

            threading.Thread(target=consume, daemon=True).start()
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                time.sleep(0.02)
            assert received == ["p0"], "the stream should be in flight when SIGTERM arrives"

            server.proc.send_signal(signal.SIGTERM)
            server.wait_for("server.draining", timeout=5)

            # a new call is refused while the old one drains (grpc core cancels calls that arrive
            # after shutdown began; one that slips in first sees NOT_SERVING)
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.RpcError as err:
                assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

            assert done.wait(timeout=15)
            assert received == ["p0", "p1", "p2", "p3"]  # the in-flight stream completed
            assert stream.code() == grpc.StatusCode.OK
        assert server.proc.wait(timeout=15) == 0
        server.wait_for("server.stopped", timeout=5)
        completed = [e for e in server.events if e.get("event") == "rpc.completed"]
        assert any(
            e["rpc"].endswith("GeneratorService/Generate") and e["code"] == "OK" and e["messages_sent"] == 4
            for e in completed
        )
    finally:
        server.stop()

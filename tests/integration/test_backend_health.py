"""Health follows the backend (issue 18, failure behaviour): a service reports NOT_SERVING while what it
depends on is down and SERVING again when it returns —
- the generator, critic-reviser and judge while their inference server does not answer (the `openai`
  engine against a real HTTP server that is stopped and started again on the same port);
- the trainer while its run store's database (PostgreSQL) refuses connections.
Before, only the review service had a probe: these stayed SERVING, so Kubernetes kept routing calls to
replicas that could only fail them."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading

import psycopg
import pytest
from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import OpenAISettings, ServerSettings, load_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import free_port
from tests.support import CONSTITUTIONS
from tests.support.review import POSTGRES_ADMIN_URL, postgres_database
from tests.support.trainer import trainer_settings

pytestmark = pytest.mark.integration

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class Models(http.server.BaseHTTPRequestHandler):
    """The part of an OpenAI-compatible server a health probe asks for: its model list."""

    def do_GET(self) -> None:  # noqa: N802
        data = json.dumps({"object": "list", "data": [{"id": "x", "object": "model"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def serve(port: int) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def becomes(channel, names: list[str], status: int, timeout: float = 20.0) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(int(timeout / 0.05)):
        got = [(await health.Check(health_pb2.HealthCheckRequest(service=n))).status for n in ["", *names]]
        if set(got) == {status}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health of {names} is {got}, not {status}")


async def test_engine_services_are_not_serving_while_their_inference_server_is_down(embedded_model):
    import grpc
    from charter.inference.openai_engine import OpenAIEngine

    port = free_port()
    http_server = serve(port)
    engine = OpenAIEngine(
        OpenAISettings(base_url=f"http://127.0.0.1:{port}/v1"), model="x", tokenizer=str(embedded_model)
    )
    resources = Resources(load_settings(constitutions={"directory": CONSTITUTIONS}), engine=engine)
    registrations = [
        SERVICES[n].registration_for(resources) for n in ("generator", "critic-reviser", "judge")
    ]
    server = CharterServer(
        ServerSettings(
            host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0, health_probe_seconds=0.2
        ),
        registrations,
    )
    grpc_port = await server.start()
    names = [r.name for r in registrations]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await becomes(channel, names, SERVING)
            http_server.shutdown()
            http_server.server_close()
            await becomes(channel, names, NOT_SERVING)
            http_server = serve(port)  # back on the same address
            await becomes(channel, names, SERVING)
    finally:
        http_server.shutdown()
        http_server.server_close()
        await server.stop(0)
        await resources.close()
        await engine.close()


async def test_the_trainer_is_not_serving_while_its_run_store_is_down(tmp_path):
    import grpc

    with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        registration = SERVICES["trainer"].registration_for_settings(
            trainer_settings(tmp_path, database_url=url)
        )
        server = CharterServer(
            ServerSettings(
                host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0, health_probe_seconds=0.2
            ),
            [registration],
        )
        port = await server.start()
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await becomes(channel, [registration.name], SERVING)
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                )
                await becomes(channel, [registration.name], NOT_SERVING)
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await becomes(channel, [registration.name], SERVING)
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.close()
            await server.stop(0)

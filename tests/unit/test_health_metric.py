"""`charter_health_serving` follows the grpc.health.v1 status (issue 20: the NOT_SERVING alert in
deploy/components/monitoring/prometheusrules.yaml reads it): 1 once the server starts, 0 while a
service's probe fails, 1 again when it recovers, 0 once draining."""

from __future__ import annotations

from charter.core.server import CharterServer, Registration
from charter.core.settings import ServerSettings
from prometheus_client import REGISTRY

NAME = "charter.test.v1.HealthMetricService"


def serving(service: str) -> float | None:
    return REGISTRY.get_sample_value("charter_health_serving", {"service": service})


async def test_health_gauge_flips_with_the_probe() -> None:
    backend_up = True

    async def probe() -> bool:
        return backend_up

    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0, health_probe_seconds=60),
        [Registration(NAME, lambda server: None, probe=probe)],
    )
    await server.start()
    try:
        assert serving(NAME) == 1
        assert serving("") is None  # the overall status adds nothing to the per-service ones

        backend_up = False
        assert await server.probe() == {NAME: False}
        assert serving(NAME) == 0

        backend_up = True
        assert await server.probe() == {NAME: True}
        assert serving(NAME) == 1
    finally:
        await server.stop(0)
    assert serving(NAME) == 0  # draining: NOT_SERVING for good

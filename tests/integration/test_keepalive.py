"""A stream that stays quiet longer than the client's keepalive interval survives: Charter's servers
accept the pings Charter's clients send (a silent CompareStream while a slow judge scored ended with
UNAVAILABLE "Too many pings" when the server's ping option was misnamed and gRPC's default applied)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from charter.client.channel import ChannelOptions, open_channel
from charter.core import server as server_module
from charter.core.server import CharterServer, Registration
from charter.core.settings import ServerSettings

pytestmark = pytest.mark.integration
QUIET_S = 6.0


async def _quiet(request: bytes, context: grpc.aio.ServicerContext):
    await asyncio.sleep(QUIET_S)  # no data either way, only the client's keepalive pings
    yield b"done"


def _register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_stream_rpc_method_handler(_quiet)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Quiet", {"Wait": handler}),))


async def test_a_quiet_stream_outlives_many_keepalive_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    # scaled down in time: the server accepts a ping every 0.5 s, the client pings every 1 s (with
    # no limit on pings without data), so the 6 s silence carries ~6 pings — 3 strikes end it by default
    monkeypatch.setattr(server_module, "MIN_PING_INTERVAL_MS", 500)
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None), [Registration("test.Quiet", _register)]
    )
    port = await server.start()
    options = ChannelOptions(
        keepalive_seconds=1, retries=1, extra=(("grpc.http2.max_pings_without_data", 0),)
    )
    try:
        async with open_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = channel.unary_stream("/test.Quiet/Wait")(b"")
            assert [reply async for reply in call] == [b"done"]
    finally:
        await server.stop(0)

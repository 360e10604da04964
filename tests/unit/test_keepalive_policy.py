"""Charter's servers accept the keepalive pings Charter's clients send. gRPC servers by default count a
ping that comes sooner than 5 minutes after the last one (with no data flowing) as a strike and end
the connection after two: `charter train` lost its WatchRun stream with UNAVAILABLE "Too many pings"
during slow training steps (metrics events minutes apart) until the server was told to accept pings
every `MIN_PING_INTERVAL_MS` (the option names gRPC reads; tests/integration/test_keepalive.py shows
the policy at work on a real quiet stream)."""

from __future__ import annotations

import asyncio

import pytest
from charter.client.channel import ChannelOptions
from charter.core import server


def test_servers_accept_a_ping_as_often_as_clients_send_one():
    client = dict(ChannelOptions().channel_arguments())
    assert client["grpc.keepalive_time_ms"] >= server.MIN_PING_INTERVAL_MS


def test_the_server_is_built_with_the_ping_policy(monkeypatch):
    captured = {}

    def fake_server(**kwargs):
        captured.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(server.aio, "server", fake_server)
    settings = server.ServerSettings(host="127.0.0.1", port=0, metrics_port=None)
    with pytest.raises(RuntimeError, match="stop here"):
        asyncio.run(server.CharterServer(settings, []).start())
    options = dict(captured["options"])
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == server.MIN_PING_INTERVAL_MS
    assert options["grpc.keepalive_permit_without_calls"] == 1

"""How Charter's channels spread calls over replicas and how its servers make long-lived channels
rebalance, read from the arguments gRPC is given (tests/integration/test_replicas.py shows both at
work on three real servers)."""

from __future__ import annotations

import asyncio
import json

import pytest
from charter.client import channel
from charter.client.channel import ChannelOptions
from charter.core import server
from charter.core.settings import ClientSettings, ServerSettings, load_settings
from pydantic import ValidationError


def config(options: ChannelOptions) -> dict:
    return json.loads(dict(options.channel_arguments())["grpc.service_config"])


def test_channels_spread_calls_round_robin_by_default():
    assert config(ChannelOptions())["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config(ChannelOptions(load_balancing="pick_first"))["loadBalancingConfig"] == [{"pick_first": {}}]
    assert config(ChannelOptions(retries=1))["loadBalancingConfig"] == [{"round_robin": {}}]
    assert "retryPolicy" in config(ChannelOptions())["methodConfig"][0]  # the retry policy is kept


def test_channels_resolve_again_sooner_than_grpcs_default():
    arguments = dict(ChannelOptions(dns_refresh_seconds=2.5).channel_arguments())
    assert arguments["grpc.dns_min_time_between_resolutions_ms"] == 2500
    assert dict(ChannelOptions().channel_arguments())["grpc.dns_min_time_between_resolutions_ms"] < 30_000


def test_the_policy_comes_from_the_client_settings_unless_the_options_name_one(monkeypatch):
    seen: list[dict] = []

    def insecure_channel(target, options, interceptors):
        seen.append(json.loads(dict(options)["grpc.service_config"]))
        return object()

    monkeypatch.setattr(channel.aio, "insecure_channel", insecure_channel)
    target = "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    channel.open_channel(target, options=ChannelOptions(client=ClientSettings()))
    channel.open_channel(target, options=ChannelOptions(client=ClientSettings(load_balancing="pick_first")))
    picked = ChannelOptions(client=ClientSettings(load_balancing="pick_first"), load_balancing="round_robin")
    channel.open_channel(target, options=picked)
    assert [c["loadBalancingConfig"][0] for c in seen] == [
        {"round_robin": {}},
        {"pick_first": {}},
        {"round_robin": {}},
    ]


def test_the_client_setting_is_checked(monkeypatch):
    monkeypatch.setenv("CHARTER_CLIENT__LOAD_BALANCING", "pick_first")
    assert load_settings().client.load_balancing == "pick_first"
    with pytest.raises(ValidationError, match="round_robin"):
        ClientSettings(load_balancing="least_request")


def captured_options(monkeypatch, settings: ServerSettings) -> dict:
    captured = {}

    def fake_server(**kwargs):
        captured.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(server.aio, "server", fake_server)
    with pytest.raises(RuntimeError, match="stop here"):
        asyncio.run(server.CharterServer(settings, []).start())
    return dict(captured["options"])


def test_servers_age_connections_out_so_channels_rebalance(monkeypatch):
    options = captured_options(monkeypatch, ServerSettings(host="127.0.0.1", port=0, metrics_port=None))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 1_800_000  # a pipeline's default batch deadline
    never = ServerSettings(host="127.0.0.1", port=0, metrics_port=None, max_connection_age_seconds=None)
    assert "grpc.max_connection_age_ms" not in captured_options(monkeypatch, never)
    no_grace = ServerSettings(
        host="127.0.0.1", port=0, metrics_port=None, max_connection_age_seconds=60,
        max_connection_age_grace_seconds=None,
    )  # fmt: skip
    options = captured_options(monkeypatch, no_grace)
    assert (
        options["grpc.max_connection_age_ms"] == 60_000 and "grpc.max_connection_age_grace_ms" not in options
    )

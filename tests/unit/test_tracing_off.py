"""Tracing off (the default) sets nothing up: no provider, no interceptor, no OpenTelemetry import, no
trace id in records; and its settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from charter.client.channel import _BearerToken, _Traced, interceptors
from charter.core import tracing
from charter.core.errors import InvalidArgument
from charter.core.settings import TracingSettings, load_settings, tracing_settings
from charter.pipelines import runner


@pytest.fixture(autouse=True)
def off():
    tracing.shutdown()
    yield
    tracing.shutdown()


def test_off_by_default_nothing_is_set_up() -> None:
    settings = load_settings()
    assert settings.tracing == TracingSettings() and not settings.tracing.enabled
    assert not tracing.enabled()
    assert tracing._provider is None and tracing._tracer is None
    assert interceptors(None) is None  # a channel without a token gets no interceptor at all
    chosen = interceptors("a-token")
    assert chosen is not None and len(chosen) == 4
    assert all(isinstance(i, _BearerToken) and not isinstance(i, _Traced) for i in chosen)
    with tracing.span("x", root=True) as s, tracing.server_span("/a.B/C", {"traceparent": "00-x"}) as t:
        assert s is None and t is None
        assert tracing.trace_id() is None and tracing.log_fields() == {}
        assert runner.provenance_trace("k") == {}  # records carry no trace_id field
    with runner.traced_batch(object(), []) as batch:
        assert batch is None
    with tracing.item_traces("x.item", ["k"]):  # requests carry no item_traceparents
        assert tracing.item_traceparents(["k"]) == [] and tracing.item_trace_id("k") is None
        with tracing.item_span("y", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") as s:
            assert s is None
        with tracing.item_spans("y", ["", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]) as both:
            assert both == [None, None]


def test_off_imports_no_opentelemetry() -> None:
    code = textwrap.dedent(
        """
        import asyncio, sys
        from charter.core.settings import load_settings
        from charter.client.channel import open_channel
        from charter.core.interceptors import ServerInterceptor
        from charter.pipelines import runner

        load_settings()
        async def main():
            channel = open_channel("127.0.0.1:1")
            await channel.close()
        asyncio.run(main())
        with runner.traced_batch(object(), []):
            runner.provenance_trace("k")
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_enabled_without_the_sdk_stays_off(monkeypatch) -> None:
    monkeypatch.setattr(tracing, "available", lambda: False)
    assert tracing.configure(TracingSettings(enabled=True)) is False
    assert not tracing.enabled() and interceptors(None) is None


def test_on_adds_the_tracing_interceptors_and_off_again_removes_them() -> None:
    assert tracing.configure(TracingSettings(enabled=True))
    chosen = interceptors(None)
    assert chosen is not None and len(chosen) == 4 and all(isinstance(i, _Traced) for i in chosen)
    tracing.shutdown()
    assert interceptors(None) is None


def test_settings_from_the_environment() -> None:
    environ = {"CHARTER_TRACING__ENABLED": "true", "CHARTER_TRACING__SAMPLE_RATIO": "0.25", "OTHER": "x"}
    got = tracing_settings(environ)
    assert got.enabled and got.sample_ratio == 0.25 and got.service_name == "charter"
    with pytest.raises(InvalidArgument, match="sample_ratio"):
        tracing_settings({"CHARTER_TRACING__SAMPLE_RATIO": "2"})
    with pytest.raises(InvalidArgument, match="unknown setting"):
        tracing_settings({"CHARTER_TRACING__ENDPOINT": "x"})


def test_export_endpoint() -> None:
    assert TracingSettings().export_endpoint({}) is None
    assert (
        TracingSettings().export_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) == "http://c:4317"
    )
    traces = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
    }
    assert TracingSettings().export_endpoint(traces) == "http://t:4317"
    assert TracingSettings(otlp_endpoint="http://s:4317").export_endpoint(traces) == "http://s:4317"

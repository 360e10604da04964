"""Tracing across real gRPC calls: an SL-CAI item (generator → critic-reviser) and an RL-CAI label
(judge → review ledger) each make one connected trace — pipeline span → client span → server span —
and the record's provenance names it. The services run in-process on a scripted engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from charter.app.catalog import SERVICES, Resources
from charter.core import tracing
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings, TracingSettings, load_settings
from charter.pipelines import best_of_n, rl_cai, sl_cai
from charter.pipelines.spec import BestOfNSpec, RlCaiSpec, SlCaiSpec
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import CONSTITUTIONS
from tests.support.fake_engine import FakeEngine
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration

GENERATE = "charter.generator.v1.GeneratorService/Generate"
SERVICE_TOKEN = "pipeline-token-for-the-tracing-test"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(TracingSettings(enabled=True, service_name="charter-test"))
    tracing.add_exporter(exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.fixture
async def address():
    settings = load_settings(constitutions={"directory": str(CONSTITUTIONS)})
    resources = Resources(settings, engine=FakeEngine())
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0),
        [SERVICES[n].registration_for(resources) for n in ("generator", "critic-reviser", "judge")],
    )
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        await resources.close()


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


def hex_id(span_id: int | None) -> str | None:
    return None if span_id is None else trace.format_span_id(span_id)


def check_trace(exporter: InMemorySpanExporter, trace_id: str, root: str, rpcs: list[str]) -> None:
    """Every span of the trace connects to `root`; each of `rpcs` is a client span under the root with
    a server span under it (the hop across gRPC)."""
    mine = [s for s in exporter.get_finished_spans() if trace.format_trace_id(s.context.trace_id) == trace_id]
    by_id = {hex_id(s.context.span_id): s for s in mine}
    roots = [s for s in mine if s.parent is None]
    assert [s.name for s in roots] == [root]
    for s in mine:  # one connected tree: every parent is a span of this trace
        assert s.parent is None or hex_id(s.parent.span_id) in by_id, s.name
    root_id = hex_id(roots[0].context.span_id)
    for rpc in rpcs:
        clients = [s for s in mine if s.name == rpc and s.kind is trace.SpanKind.CLIENT]
        assert clients, f"no client span for {rpc}"
        for client in clients:
            assert hex_id(client.parent.span_id) == root_id
            assert client.attributes["rpc.grpc.status_code"] == "OK"
            servers = [
                s
                for s in mine
                if s.kind is trace.SpanKind.SERVER and s.parent is not None
                and s.parent.span_id == client.context.span_id
            ]  # fmt: skip
            assert [s.name for s in servers] == [rpc]
            assert servers[0].attributes["rpc.grpc.status_code"] == "OK"


async def test_one_connected_trace_per_sl_cai_item(tmp_path, address, spans) -> None:
    settings = load_settings(constitutions={"directory": str(CONSTITUTIONS)})
    services = {"mode": "remote", "generator": address, "critic_reviser": address}
    spec = SlCaiSpec.model_validate({
        "kind": "sl-cai", "name": "traced-sl", "output": str(tmp_path / "sl"), "rounds": 1,
        "constitution": "harmless", "batch_size": 1, "services": services, "seed": 3,
        "source": {"path": str(HH_DEV), "format": "hh-rlhf", "limit": 2},
    })  # fmt: skip
    summary = await sl_cai.run(spec, settings)
    assert summary.written == 2
    rows = records(tmp_path / "sl")
    ids = [r["provenance"]["trace_id"] for r in rows]
    assert len(set(ids)) == 2 and all(len(i) == 32 and int(i, 16) for i in ids)  # one trace per item
    for trace_id in ids:
        check_trace(
            spans,
            trace_id,
            "sl-cai.batch",
            [GENERATE, "charter.critic.v1.CriticReviserService/CritiqueReviseStream"],
        )


@pytest.fixture
async def review_address(tmp_path):
    settings = load_settings(
        review={
            "database_url": f"sqlite:///{tmp_path}/ledger.db",
            "tokens": [{"name": "pipeline", "role": "service", "token": SERVICE_TOKEN}],
            "web_port": None,
        }
    )
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0),
        [SERVICES["review"].registration_for_settings(settings)],
    )
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_one_connected_trace_per_rl_cai_label(tmp_path, address, review_address, spans) -> None:
    settings = load_settings(constitutions={"directory": str(CONSTITUTIONS)})
    token_file = tmp_path / "token"
    token_file.write_text(SERVICE_TOKEN)
    services = {"mode": "remote", "judge": address}
    spec = RlCaiSpec.model_validate({
        "kind": "rl-cai", "name": "traced-rl", "output": str(tmp_path / "rl"), "constitution": "harmless",
        "batch_size": 1, "services": services, "seed": 3, "judge": {"principles_per_label": 1},
        "pairs": {"kind": "file", "path": str(HH_DEV), "format": "hh-rlhf", "limit": 1},
        "ledger": {"address": review_address, "token_file": str(token_file)},
    })  # fmt: skip
    summary = await rl_cai.run(spec, settings)
    assert summary.written == 1 and sum(summary.ledger.values()) == 1
    (row,) = records(tmp_path / "rl")
    rpcs = ["charter.judge.v1.JudgeService/CompareStream", "charter.review.v1.ReviewService/Submit"]
    check_trace(spans, row["provenance"]["trace_id"], "rl-cai.batch", rpcs)
    (batch,) = [s for s in spans.get_finished_spans() if s.name == "rl-cai.batch"]
    assert batch.attributes["charter.item_keys"] == (row["key"],)


async def test_best_of_n_records_name_their_trace(tmp_path, address, spans) -> None:
    settings = load_settings(constitutions={"directory": str(CONSTITUTIONS)})
    spec = BestOfNSpec.model_validate({
        "kind": "best-of-n", "name": "traced-bon", "output": str(tmp_path / "bon"), "n": 2, "seed": 3,
        "batch_size": 1, "services": {"mode": "remote", "generator": address, "judge": address},
        "scorer": {"judge": {"constitution": "harmless", "principles_per_label": 1}},
        "source": {"path": str(HH_DEV), "format": "hh-rlhf", "limit": 1},
    })  # fmt: skip
    summary = await best_of_n.run(spec, settings)
    assert summary.written == 1
    (row,) = records(tmp_path / "bon")
    check_trace(spans, row["provenance"]["trace_id"], "best-of-n.batch", [GENERATE])


async def test_a_rejected_item_leaves_its_status_on_both_sides(tmp_path, address, spans) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text(
        json.dumps({"prompt": "too long"}) + "\n" + json.dumps({"prompt": "Name a colour."}) + "\n"
    )
    settings = load_settings(constitutions={"directory": str(CONSTITUTIONS)})
    services = {"mode": "remote", "generator": address, "critic_reviser": address}
    spec = SlCaiSpec.model_validate({
        "kind": "sl-cai", "name": "traced-errors", "output": str(tmp_path / "sl"), "rounds": 1,
        "constitution": "harmless", "batch_size": 2, "services": services, "seed": 3,
        "source": {"path": str(source), "format": "jsonl"},
    })  # fmt: skip
    summary = await sl_cai.run(spec, settings)
    assert summary.written == 1 and summary.row_errors == 1
    (row,) = records(tmp_path / "sl")
    trace_id = row["provenance"]["trace_id"]
    mine = [s for s in spans.get_finished_spans() if trace.format_trace_id(s.context.trace_id) == trace_id]
    (batch,) = [s for s in mine if s.parent is None]
    assert batch.name == "sl-cai.batch" and batch.attributes["charter.items"] == 2  # both items, one trace
    failed = [
        s for s in mine if s.name == GENERATE and s.attributes["rpc.grpc.status_code"] == "INVALID_ARGUMENT"
    ]
    kinds = sorted(s.kind.name for s in failed)  # the batch, then the bad item alone: client and server each
    assert kinds == ["CLIENT", "CLIENT", "SERVER", "SERVER"]
    assert all(not s.status.is_ok for s in failed)


def test_the_review_page_traces_each_request_under_the_callers_trace(spans, tmp_path: Path) -> None:
    """The review page (Starlette) answers under a server span per request: the child of the caller's
    span when a `traceparent` header comes with it, with the response's status."""
    from charter.api.review import label_view
    from charter.core.auth import Authenticator
    from charter.core.settings import ReviewerToken, RoutingSettings
    from charter.review.store import Ledger
    from charter.review.web import create_app
    from starlette.testclient import TestClient

    ledger = Ledger(f"sqlite:///{tmp_path}/l.db", RoutingSettings(audit_rate=0.0))
    auth = Authenticator([ReviewerToken(name="alice", role="reviewer", token="tok-alice-tracing")])
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        with TestClient(create_app(ledger, auth, label_view), follow_redirects=False) as client:
            ok = client.get(
                "/api/me", headers={"authorization": "Bearer tok-alice-tracing", "traceparent": caller}
            )
            refused = client.get("/api/me")
    finally:
        ledger.close()
    assert ok.status_code == 200 and refused.status_code == 401
    http = [s for s in spans.get_finished_spans() if s.name == "GET /api/me"]
    assert len(http) == 2 and all(s.kind == trace.SpanKind.SERVER for s in http)
    answered, denied = http
    assert trace.format_trace_id(answered.context.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert answered.parent is not None and trace.format_span_id(answered.parent.span_id) == "b7ad6b7169203331"
    assert answered.attributes["http.response.status_code"] == 200
    assert denied.parent is None and denied.attributes["http.response.status_code"] == 401

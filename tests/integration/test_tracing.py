"""Tracing across real gRPC calls. A pipeline batch makes one connected trace of its calls — batch
span → client span → server span — and each item one of its own — item span → each service's span
for its work on the item (generator → critic-reviser for an SL-CAI prompt, judge → review ledger for
an RL-CAI label), each linked to the server span of the call that carried it — and the record's
provenance names the item's. The services run in-process on a scripted engine."""

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


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list:
    return [s for s in exporter.get_finished_spans() if trace.format_trace_id(s.context.trace_id) == trace_id]


def check_item_trace(
    exporter: InMemorySpanExporter, trace_id: str, root: str, key: str, hops: dict[str, str]
) -> str:
    """The item's trace: its root span (`root`, named by the item's key) and under it each service's
    span for the item (`hops`: span name -> the RPC whose server span it is linked to, in the batch's
    trace). Returns the batch's trace id (the root's link)."""
    mine = spans_of(exporter, trace_id)
    (item,) = [s for s in mine if s.parent is None]
    assert item.name == root and item.attributes["charter.item_key"] == key
    (batch_link,) = item.links
    batch_trace = trace.format_trace_id(batch_link.context.trace_id)
    assert batch_trace != trace_id
    by_span = {(s.context.trace_id, s.context.span_id): s for s in exporter.get_finished_spans()}
    for name, rpc in hops.items():
        found = [s for s in mine if s.name == name]
        assert found, f"no {name} span in the item's trace"
        for s in found:
            assert s.parent.span_id == item.context.span_id
            (link,) = s.links
            server = by_span[(link.context.trace_id, link.context.span_id)]
            assert server.name == rpc and server.kind is trace.SpanKind.SERVER
            assert trace.format_trace_id(link.context.trace_id) == batch_trace
    assert {s.name for s in mine} == {root, *hops}
    return batch_trace


def check_trace(exporter: InMemorySpanExporter, trace_id: str, root: str, rpcs: list[str]) -> None:
    """Every span of the trace connects to `root`; each of `rpcs` is a client span under the root with
    a server span under it (the hop across gRPC)."""
    mine = spans_of(exporter, trace_id)
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
    """Three prompts in two batches: a trace per batch with its calls, a trace per prompt."""
    settings = load_settings(constitutions={"directory": str(CONSTITUTIONS)})
    services = {"mode": "remote", "generator": address, "critic_reviser": address}
    spec = SlCaiSpec.model_validate({
        "kind": "sl-cai", "name": "traced-sl", "output": str(tmp_path / "sl"), "rounds": 1,
        "constitution": "harmless", "batch_size": 2, "services": services, "seed": 3,
        "source": {"path": str(HH_DEV), "format": "hh-rlhf", "limit": 3},
    })  # fmt: skip
    summary = await sl_cai.run(spec, settings)
    assert summary.written == 3
    rows = records(tmp_path / "sl")
    ids = [r["provenance"]["trace_id"] for r in rows]
    assert len(set(ids)) == 3 and all(len(i) == 32 and int(i, 16) for i in ids)  # one trace per item
    critique = "charter.critic.v1.CriticReviserService/CritiqueReviseStream"
    batches = [
        check_item_trace(
            spans, r["provenance"]["trace_id"], "sl-cai.item", r["key"],
            {"generator.prompt": GENERATE, "critic.item": critique},
        )
        for r in rows
    ]  # fmt: skip
    assert batches[0] == batches[1] != batches[2]  # two batches: the first two prompts, then the third
    for batch_trace in set(batches):
        check_trace(spans, batch_trace, "sl-cai.batch", [GENERATE, critique])
    critic_items = [s for s in spans.get_finished_spans() if s.name == "critic.item"]
    assert {s.attributes["charter.status"] for s in critic_items} <= {"ok", "truncated", "echo", "degenerate"}


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
    compare, submit = "charter.judge.v1.JudgeService/CompareStream", "charter.review.v1.ReviewService/Submit"
    hops = {"judge.item": compare, "review.label": submit}
    batch_trace = check_item_trace(spans, row["provenance"]["trace_id"], "rl-cai.item", row["key"], hops)
    check_trace(spans, batch_trace, "rl-cai.batch", [compare, submit])
    (batch,) = [s for s in spans.get_finished_spans() if s.name == "rl-cai.batch"]
    assert batch.attributes["charter.item_keys"] == (row["key"],)
    (judged,) = [s for s in spans.get_finished_spans() if s.name == "judge.item"]
    assert judged.attributes["charter.status"] == row["status"]
    (routed,) = [s for s in spans.get_finished_spans() if s.name == "review.label"]
    assert routed.attributes["charter.duplicate"] is False and routed.attributes["charter.route"]


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
    hops = {"generator.prompt": GENERATE}  # the scripted engine's samples agree: nothing to compare
    batch_trace = check_item_trace(spans, row["provenance"]["trace_id"], "best-of-n.item", row["key"], hops)
    check_trace(spans, batch_trace, "best-of-n.batch", [GENERATE])


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
    (item,) = [s for s in spans_of(spans, row["provenance"]["trace_id"]) if s.parent is None]
    mine = spans_of(spans, trace.format_trace_id(item.links[0].context.trace_id))
    (batch,) = [s for s in mine if s.parent is None]
    assert batch.name == "sl-cai.batch" and batch.attributes["charter.items"] == 2  # both items, one trace
    failed = [
        s for s in mine if s.name == GENERATE and s.attributes["rpc.grpc.status_code"] == "INVALID_ARGUMENT"
    ]
    kinds = sorted(s.kind.name for s in failed)  # the batch, then the bad item alone: client and server each
    assert kinds == ["CLIENT", "CLIENT", "SERVER", "SERVER"]
    assert all(not s.status.is_ok for s in failed)


async def test_a_unary_compare_records_each_item_in_its_own_trace(address, spans) -> None:
    """`Compare` judges its items together: a span per item in the item's trace, linked to the call's;
    an item without a (valid) traceparent gets none; a field that does not match the items is refused."""
    from charter.api.judge import compare_request
    from charter.datasets.pairs import read_pairs
    from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
    from grpc import StatusCode, aio

    pairs = list(read_pairs(HH_DEV, limit=3))
    options = judge_pb2.JudgeOptions(constitution_id="harmless", principles_per_label=1)
    with tracing.item_traces("test.item", ["a", "b", "c"]):
        traces = tracing.item_traceparents(["a", "b", "c"])
    traces[2] = "00-not-a-trace"
    streamed = compare_request(pairs, options, "traced-compare", traces)
    request = judge_pb2.CompareRequest(
        items=streamed.items, options=options, request_id="traced-compare", item_traceparents=traces
    )
    async with aio.insecure_channel(address) as channel:
        stub = judge_pb2_grpc.JudgeServiceStub(channel)
        reply = await stub.Compare(request)
        assert len(reply.labels) == 3
        del request.item_traceparents[2]
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.Compare(request)
    assert refused.value.code() is StatusCode.INVALID_ARGUMENT and "item_traceparents" in refused.value.details()
    judged = sorted(
        (s for s in spans.get_finished_spans() if s.name == "judge.item"),
        key=lambda s: s.attributes["charter.item_index"],
    )
    assert [trace.format_trace_id(s.context.trace_id) for s in judged] == [t.split("-")[1] for t in traces[:2]]
    assert [s.attributes["charter.item_index"] for s in judged] == [0, 1]
    assert all(s.links and s.links[0].context.trace_id != s.context.trace_id for s in judged)


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

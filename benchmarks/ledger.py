"""Review ledger throughput: ingest labels over gRPC, stream them to a consumer, and claim items with
20 concurrent reviewers — the real review service (`CharterServer` + `ReviewServicer`) started
in-process on a free port, on SQLite (a temp file) and PostgreSQL (a fresh database, dropped after).

Workload: realistic judged labels (~1-2 KB serialised) over the shared hh-rlhf dev pairs: the
conversation, both responses, one `harmless` principle, two `OrderScore`s (both presentation orders),
constitution, judge and provenance; content-derived-looking ids (sha256 hex).

Per backend:
1. ingest: `--labels` confident, swap-consistent labels (auto-accepted, so all reach the stream) in
   `Submit` calls of `--batch` labels, one call in flight — labels/s end to end (client
   serialisation + gRPC + server + database). Baseline, same run, same server: one label per
   `Submit` (`--unbatched-labels`). Breakdown: `Ledger.submit` called directly (no gRPC) in the same
   batches on a second, empty database (`--direct-labels`), against the gRPC run's first as many.
2. stream: one consumer reads exactly the ingested labels (`StreamLabels`, from cursor 0,
   follow=False, order and ids checked) at the service's default labels per message (the figure;
   `--stream-message-labels` to choose) and at one label per message (baseline). Breakdowns:
   `Ledger.accepted_after` pages read directly (no gRPC), and a bare grpc.aio server streaming the
   same messages with no service or database (the transport's ceiling, `--ceiling-labels`). Push
   latency: a following consumer (follow=True) is open while `--push-rounds` batches of
   `--push-batch` labels are submitted; the time from the `Submit` call to the consumer seeing the
   batch's last label.
3. claims: 1.2 x the claims of three passes are queued as uncertain labels (confidence 0.1 → human
   queue); each reviewer has its own token and channel and loops Claim → Decide (A); the latency of
   every Claim is taken client-side, and every pass checks that no item went to two reviewers.
   Passes: one reviewer alone (baseline), `--reviewers` back to back (the figure), `--reviewers`
   pausing 0.5-1.5 x `--think-ms` after each decision (`--paced-claims-per-reviewer`).

Clients and server share this process (one interpreter, one event loop), as in the integration tests.

    python benchmarks/ledger.py                                 # writes benchmarks/results/ledger.json
    python benchmarks/ledger.py --backends sqlite --labels 5000 --out /tmp/ledger.json   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import math
import os
import platform
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc core's INFO lines (GOAWAY on server stop)
ROOT = Path(__file__).resolve().parent.parent
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"
PRINCIPLES = ("violence", "illegal-activity", "deception", "privacy", "bias", "manipulation", "weapons",
              "drugs", "harassment", "hate", "overall-harm")  # fmt: skip
MIN_CHARS, MAX_CHARS = 500, 1500  # conversation + both responses: ~1-2 KB serialised labels
TARGETS = {
    "ingest_labels_per_s_postgresql_batched": 5000.0,
    "stream_labels_per_s": 20000.0,
    "claim_p99_ms": 50.0,
}
SERVICE_TOKEN = "bench-service-token"


# ---- workload --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    turns: list[tuple[str, str]]
    chosen: str
    rejected: str


def load_pairs(limit: int = 400) -> list[Pair]:
    """hh-rlhf dev pairs (shared prefix, two final assistant turns) of MIN_CHARS..MAX_CHARS in all."""
    pairs = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            cut = record["chosen"].rfind("\n\nAssistant:")
            prefix = record["chosen"][:cut]
            if cut < 0 or record["rejected"][:cut] != prefix:
                continue
            start = cut + len("\n\nAssistant:")
            chosen, rejected = record["chosen"][start:].strip(), record["rejected"][start:].strip()
            turns = []
            for turn in prefix.strip().split("\n\n"):
                role, _, content = turn.partition(":")
                if content.strip():
                    turns.append((role.strip(), content.strip()))
            size = sum(len(c) for _, c in turns) + len(chosen) + len(rejected)
            if chosen == rejected or not turns or not MIN_CHARS <= size <= MAX_CHARS:
                continue
            pairs.append(Pair(turns, chosen, rejected))
            if len(pairs) == limit:
                break
    if not pairs:
        raise SystemExit(f"{HH}: no usable pairs")
    return pairs


class LabelMaker:
    """Judged labels over the pairs; ids are sha256 hex over (run, kind, index), unique per run."""

    def __init__(self, pairs: list[Pair], run: str) -> None:
        from charter_proto.common.v1 import conversation_pb2

        self.pairs, self.run = pairs, run
        self.conversations = []
        for pair in pairs:
            conversation = conversation_pb2.Conversation()
            for role, content in pair.turns:
                value = conversation_pb2.ROLE_ASSISTANT if role == "Assistant" else conversation_pb2.ROLE_USER
                conversation.messages.add(role=value, content=content)
            self.conversations.append(conversation)

    def make(self, kind: str, index: int, confidence: float) -> Any:
        from charter_proto.common.v1 import label_pb2

        pair = self.pairs[index % len(self.pairs)]
        principle = PRINCIPLES[index % len(PRINCIPLES)]
        p_a = 0.5 + confidence / 2
        label = label_pb2.PreferenceLabel(
            id=hashlib.sha256(f"{self.run}/{kind}/{index}".encode()).hexdigest(),
            response_a=pair.chosen,
            response_b=pair.rejected,
            p_a=p_a,
            choice=label_pb2.CHOICE_A if p_a > 0.5 else label_pb2.CHOICE_TIE,
            confidence=confidence,
            swap_consistent=True,
            principle_ids=[principle],
            status=label_pb2.LABEL_STATUS_OK,
        )
        label.conversation.CopyFrom(self.conversations[index % len(self.pairs)])
        for swapped, p_first in ((False, p_a), (True, 1.0 - p_a)):
            label.scores.add(
                swapped=swapped,
                p_first=p_first,
                option_logprobs=[math.log(max(p_first, 1e-6)), math.log(max(1.0 - p_first, 1e-6))],
                principle_id=principle,
            )
        label.constitution.id = "harmless"
        label.constitution.version = "3"
        label.constitution.digest = "sha256:" + hashlib.sha256(b"harmless/3").hexdigest()
        label.judge.name = "SmolLM2-135M-Instruct"
        label.judge.engine = "vllm"
        label.judge.revision = "main"
        p = label.provenance
        p.constitution.CopyFrom(label.constitution)
        p.principle_ids.append(principle)
        p.model.CopyFrom(label.judge)
        p.seed = 1234
        p.created_at.FromNanoseconds(1_790_000_000_000_000_000 + index)
        p.run_id = f"bench-{self.run}"
        p.charter_version = "0.1.0"
        return label

    def many(self, kind: str, count: int, confidence: float) -> list[Any]:
        return [self.make(kind, i, confidence) for i in range(count)]


# ---- the service -----------------------------------------------------------------------------------
def reviewer_names(count: int) -> list[str]:
    return [f"reviewer-{i:02d}" for i in range(count)]


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@contextlib.asynccontextmanager
async def review_server(url: str, reviewers: int) -> AsyncIterator[tuple[int, Any]]:
    """The real review service on 127.0.0.1, port 0; yields (port, servicer)."""
    from charter.app.catalog import SERVICES
    from charter.core.server import CharterServer
    from charter.core.settings import ServerSettings, load_settings

    tokens = [{"name": "pipeline", "role": "service", "token": SERVICE_TOKEN}]
    tokens += [{"name": n, "role": "reviewer", "token": f"{n}-token"} for n in reviewer_names(reviewers)]
    settings = load_settings(
        review={
            "database_url": url,
            "tokens": tokens,
            "web_port": None,
            "routing": {"audit_rate": 0.0, "accept_confidence": 0.5},
        }
    )
    registration = SERVICES["review"].registration_for_settings(settings)
    server = CharterServer(ServerSettings(host="127.0.0.1", port=0, metrics_port=None), [registration])
    port = await server.start()
    try:
        yield port, registration.lifecycle
    finally:
        await server.stop(0)


@contextlib.contextmanager
def database(backend: str, admin_url: str, suffix: str = "") -> Iterator[str]:
    """A fresh, empty ledger database: a temp SQLite file, or a new PostgreSQL database (dropped after)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="charter-bench-") as folder:
            yield f"sqlite:///{folder}/ledger{suffix}.db"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"charter_bench_{secrets.token_hex(6)}{suffix}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- measurements ----------------------------------------------------------------------------------
def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """Nearest-rank percentiles (x scale: ms by default)."""
    s = sorted(values)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] * scale

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": s[-1] * scale,
            "mean": statistics.fmean(s) * scale, "n": len(s)}  # fmt: skip


async def submit_all(stub: Any, labels: list[Any], batch: int) -> dict[str, Any]:
    from charter_proto.review.v1 import review_pb2 as rv

    meta = auth(SERVICE_TOKEN)
    calls, accepted = [], 0
    started = time.perf_counter()
    for start in range(0, len(labels), batch):
        t = time.perf_counter()
        response = await stub.Submit(rv.SubmitRequest(labels=labels[start : start + batch]), metadata=meta)
        calls.append(time.perf_counter() - t)
        accepted += sum(r.route == rv.ROUTE_AUTO_ACCEPTED and not r.duplicate for r in response.results)
    seconds = time.perf_counter() - started
    if accepted != len(labels):
        raise SystemExit(f"ingest: {accepted} of {len(labels)} labels auto-accepted")
    return {"labels": len(labels), "batch": batch, "calls": len(calls), "seconds": seconds,
            "labels_per_s": len(labels) / seconds, "call_ms": percentiles(calls),
            "_calls": calls}  # fmt: skip


def direct_submit(url: str, labels: list[Any], batch: int) -> dict[str, Any]:
    """`Ledger.submit` without gRPC (the labels are already protos: no client serialisation; their
    conversion to the ledger's `Submission`s, which serialises each, is timed, as the servicer does it)."""
    from charter.api.review import submissions
    from charter.core.settings import RoutingSettings
    from charter.review.store import Ledger

    ledger = Ledger(url, RoutingSettings(audit_rate=0.0, accept_confidence=0.5))
    try:
        started = time.perf_counter()
        for start in range(0, len(labels), batch):
            ledger.submit(submissions(labels[start : start + batch]))
        seconds = time.perf_counter() - started
    finally:
        ledger.close()
    return {"labels": len(labels), "batch": batch, "seconds": seconds, "labels_per_s": len(labels) / seconds}


async def stream_all(stub: Any, expected: int, per_message: int = 0) -> dict[str, Any]:
    """One consumer reads the whole accepted stream (from cursor 0, follow=False), up to
    `per_message` labels per response message (0 = the service's default)."""
    from charter_proto.review.v1 import review_pb2 as rv

    count, messages, last, ids = 0, 0, 0, set()
    started = time.perf_counter()
    first = None
    request = rv.StreamLabelsRequest(follow=False, max_labels_per_message=per_message)
    async for response in stub.StreamLabels(request, metadata=auth(SERVICE_TOKEN)):
        if first is None:
            first = time.perf_counter() - started
        messages += 1
        for label in response.labels:
            if label.sequence != last + 1:
                raise SystemExit(f"stream: sequence {label.sequence} after {last}")
            last = label.sequence
            ids.add(label.label.id)
            count += 1
        if response.cursor.sequence != last:
            raise SystemExit(f"stream: cursor {response.cursor.sequence}, last label {last}")
    seconds = time.perf_counter() - started
    if count != expected or len(ids) != expected:
        raise SystemExit(f"stream: {count} labels ({len(ids)} distinct), {expected} expected")
    return {"labels": count, "messages": messages, "max_labels_per_message": per_message or "default",
            "seconds": seconds, "labels_per_s": count / seconds,
            "first_message_ms": (first or 0.0) * 1000}  # fmt: skip


def direct_stream(ledger: Any, page: int) -> dict[str, Any]:
    """`Ledger.accepted_after` pages made AcceptedLabel protos (`charter.api.review.accepted_page`, as
    the servicer reads them), no gRPC."""
    from charter.api.review import accepted_page

    count, cursor = 0, 0
    started = time.perf_counter()
    while True:
        result = accepted_page(ledger, cursor, None, page)
        count += len(result.labels)
        cursor = result.last
        if not result.more:
            break
    seconds = time.perf_counter() - started
    return {"labels": count, "page": page, "seconds": seconds, "labels_per_s": count / seconds}


async def stream_ceiling(labels: list[Any], count: int, per_message: tuple[int, ...]) -> dict[str, Any]:
    """What Python gRPC (grpc.aio, this process) streams with no service around it: a bare server (no
    interceptor, no database) sending `count` of `labels` as StreamLabelsResponse messages of
    `per_message` labels (message objects serialised per send, as the servicer's are) to a client
    using the generated deserialiser. The ceiling the ledger's stream is measured against."""
    import grpc
    from charter_proto.review.v1 import review_pb2 as rv

    accepted = [
        rv.AcceptedLabel(
            sequence=i + 1, label=label, source=rv.LABEL_SOURCE_AI, p_a=label.p_a, choice=label.choice
        )
        for i, label in enumerate(labels)
    ]
    out: dict[str, Any] = {"labels": count}
    for n in per_message:
        messages = [
            rv.StreamLabelsResponse(labels=accepted[i : i + n], cursor=rv.LabelCursor(sequence=i + n))
            for i in range(0, len(accepted), n)
        ]

        async def send(
            _request: Any, _context: Any, messages: list[Any] = messages, n: int = n
        ) -> AsyncIterator[Any]:
            for i in range(count // n):
                yield messages[i % len(messages)]

        handler = grpc.unary_stream_rpc_method_handler(
            send, response_serializer=rv.StreamLabelsResponse.SerializeToString
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Ceiling", {"S": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_stream(
                    "/bench.Ceiling/S", response_deserializer=rv.StreamLabelsResponse.FromString
                )(b"")
                received = 0
                started = time.perf_counter()
                async for response in call:
                    received += sum(label.sequence > 0 for label in response.labels)
                seconds = time.perf_counter() - started
        finally:
            await server.stop(0)
        out[f"per_message_{n}"] = {"seconds": seconds, "labels_per_s": received / seconds}
    return out


async def push_latency(stub: Any, batches: list[list[Any]], pause: float) -> dict[str, Any]:
    """A following consumer; per batch, the time from the Submit call to the consumer seeing its last
    label."""
    from charter_proto.review.v1 import review_pb2 as rv

    meta = auth(SERVICE_TOKEN)
    stats = await stub.Stats(rv.StatsRequest(), metadata=meta)
    request = rv.StreamLabelsRequest(from_cursor=stats.last_cursor, follow=True)
    call = stub.StreamLabels(request, metadata=meta)
    waiting: dict[str, asyncio.Future[float]] = {}
    loop = asyncio.get_running_loop()

    async def consume() -> None:
        async for response in call:
            for label in response.labels:
                future = waiting.pop(label.label.id, None)
                if future is not None:
                    future.set_result(time.perf_counter())

    reader = asyncio.create_task(consume())
    await asyncio.sleep(0.3)  # the stream has read its (empty) backlog and waits
    latencies, submits = [], []
    try:
        for batch in batches:
            seen = waiting[batch[-1].id] = loop.create_future()
            started = time.perf_counter()
            await stub.Submit(rv.SubmitRequest(labels=batch), metadata=meta)
            submits.append(time.perf_counter() - started)
            latencies.append(await asyncio.wait_for(seen, 30) - started)
            await asyncio.sleep(pause)
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return {"rounds": len(batches), "batch": len(batches[0]),
            "from_submit_call_ms": percentiles(latencies), "submit_call_ms": percentiles(submits),
            "median_ms": statistics.median(latencies) * 1000}  # fmt: skip


async def claims(port: int, reviewers: int, per_reviewer: int, think: float = 0.0) -> dict[str, Any]:
    """`reviewers` concurrent reviewers, each Claim then Decide (A) `per_reviewer` times, waiting a
    uniform 0.5-1.5 x `think` seconds after each decision (0 = back to back)."""
    import random

    from charter.client.channel import open_channel
    from charter_proto.review.v1 import review_pb2 as rv
    from charter_proto.review.v1 import review_pb2_grpc

    claim_s: list[float] = []
    decide_s: list[float] = []
    items: list[tuple[str, str]] = []
    empty = 0
    go = asyncio.Event()

    async def reviewer(name: str, ready: asyncio.Future[None]) -> None:
        nonlocal empty
        meta = auth(f"{name}-token")
        async with open_channel(f"127.0.0.1:{port}") as channel:
            await channel.channel_ready()
            stub = review_pb2_grpc.ReviewServiceStub(channel)
            ready.set_result(None)
            await go.wait()
            if think:  # paced reviewers arrive spread out, not as one burst
                await asyncio.sleep(think * rng.random())
            for _ in range(per_reviewer):
                t = time.perf_counter()
                response = await stub.Claim(rv.ClaimRequest(), metadata=meta)
                claim_s.append(time.perf_counter() - t)
                item = response.item
                if not item.item_id:
                    empty += 1
                    continue
                items.append((name, item.item_id))
                decide = rv.DecideRequest(
                    item_id=item.item_id, lease_id=item.lease_id, choice=rv.HUMAN_CHOICE_A
                )
                t = time.perf_counter()
                await stub.Decide(decide, metadata=meta)
                decide_s.append(time.perf_counter() - t)
                if think:
                    await asyncio.sleep(think * (0.5 + rng.random()))

    rng = random.Random(1234)
    loop = asyncio.get_running_loop()
    ready = [loop.create_future() for _ in range(reviewers)]
    tasks = [
        asyncio.create_task(reviewer(n, r)) for n, r in zip(reviewer_names(reviewers), ready, strict=True)
    ]
    await asyncio.gather(*ready)
    started = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    distinct = len({item for _, item in items})
    if empty or distinct != len(items):
        raise SystemExit(f"claims: {len(items)} claimed, {distinct} distinct items, {empty} empty claims")
    return {"reviewers": reviewers, "think_ms": think * 1000, "claims": len(claim_s), "distinct_items": distinct,
            "items_given_twice": len(items) - distinct, "empty_claims": empty, "seconds": seconds,
            "claims_per_s": len(claim_s) / seconds, "claim_ms": percentiles(claim_s),
            "decide_ms": percentiles(decide_s)}  # fmt: skip


async def claim_phases(stub: Any, port: int, args: argparse.Namespace, maker: LabelMaker,
                       say: Any) -> dict[str, Any]:  # fmt: skip
    """One reviewer alone (the uncontended baseline), `--reviewers` back to back (the figure), and
    `--reviewers` paced by a think time; the queue holds 1.2 x the claims of all three."""
    from charter_proto.review.v1 import review_pb2 as rv

    plan = [("claims_one_reviewer", 1, args.claims_per_reviewer, 0.0),
            ("claims", args.reviewers, args.claims_per_reviewer, 0.0),
            ("claims_paced", args.reviewers, args.paced_claims_per_reviewer, args.think_ms / 1000)]  # fmt: skip
    plan = [p for p in plan if p[2] > 0]
    queued = maker.many("uncertain", int(sum(n * per for _, n, per, _ in plan) * 1.2), 0.1)
    for start in range(0, len(queued), args.batch):
        request = rv.SubmitRequest(labels=queued[start : start + args.batch])
        response = await stub.Submit(request, metadata=auth(SERVICE_TOKEN))
        if any(r.route != rv.ROUTE_HUMAN_REVIEW for r in response.results):
            raise SystemExit("claims: an uncertain label was not queued for human review")
    out, left = {}, len(queued)
    for key, reviewers, per, think in plan:
        result = await claims(port, reviewers, per, think)
        result["queue_depth_at_start"] = left
        left -= result["claims"]
        out[key] = result
        say(f"{key}: claim p50 {result['claim_ms']['p50']:.1f} ms, p99 {result['claim_ms']['p99']:.1f} ms, "
            f"{result['claims_per_s']:.0f} claims/s")  # fmt: skip
    return out


async def run_backend(backend: str, args: argparse.Namespace, maker: LabelMaker) -> dict[str, Any]:
    from charter.client.channel import open_channel
    from charter_proto.review.v1 import review_pb2 as rv
    from charter_proto.review.v1 import review_pb2_grpc

    def say(what: str) -> None:
        print(f"[ledger] {backend}: {what}", file=sys.stderr, flush=True)

    out: dict[str, Any] = {}
    started = time.perf_counter()
    labels = maker.many("ingest", args.labels, 0.9)
    sizes = [label.ByteSize() for label in labels[:2000]]
    out["label_bytes"] = {"mean": statistics.fmean(sizes), "min": min(sizes), "max": max(sizes)}
    t = time.perf_counter()
    for start in range(0, len(labels), args.batch):
        rv.SubmitRequest(labels=labels[start : start + args.batch]).SerializeToString()
    seconds = time.perf_counter() - t
    out["client_serialisation"] = {"seconds": seconds, "labels_per_s": len(labels) / seconds}
    async with contextlib.AsyncExitStack() as stack:
        url = stack.enter_context(database(backend, args.postgres_url))
        port, servicer = await stack.enter_async_context(review_server(url, args.reviewers))
        channel = await stack.enter_async_context(open_channel(f"127.0.0.1:{port}"))
        stub = review_pb2_grpc.ReviewServiceStub(channel)
        # 1. ingest, batched (the figure); its first `--direct-labels` compare with Ledger.submit
        ingest = await submit_all(stub, labels, args.batch)
        calls = ingest.pop("_calls")
        first = max(1, args.direct_labels // args.batch)
        ingest["first_labels"] = {"labels": first * args.batch,
                                  "labels_per_s": first * args.batch / sum(calls[:first])}  # fmt: skip
        last = calls[-first:]
        ingest["last_labels"] = {"labels": len(last) * args.batch,
                                 "labels_per_s": len(last) * args.batch / sum(last)}  # fmt: skip
        out["ingest_batched"] = ingest
        say(f"ingest batched {ingest['labels_per_s']:,.0f} labels/s ({ingest['seconds']:.1f} s)")
        # 2. the stream: exactly the ingested labels, at the service's default labels per message
        # (the figure) and one label per message (the baseline), then the same pages read directly
        out["stream"] = await stream_all(stub, args.labels, args.stream_message_labels)
        say(f"stream {out['stream']['labels_per_s']:,.0f} labels/s ({out['stream']['messages']} messages)")
        out["stream_one_per_message"] = await stream_all(stub, args.labels, 1)
        say(f"stream, 1 label per message {out['stream_one_per_message']['labels_per_s']:,.0f} labels/s")
        out["stream_direct"] = direct_stream(servicer.ledger, servicer.settings.stream_batch)
        say(f"stream direct (accepted_after) {out['stream_direct']['labels_per_s']:,.0f} labels/s")
        if args.ceiling_labels:
            per = (1, args.stream_message_labels or servicer.settings.stream_message_labels)
            out["stream_grpc_ceiling"] = c = await stream_ceiling(labels[:1000], args.ceiling_labels, per)
            say("bare gRPC stream ceiling " + ", ".join(
                f"{c[f'per_message_{n}']['labels_per_s']:,.0f} labels/s at {n}/message" for n in per))  # fmt: skip
        # the ingest baseline: one label per Submit
        unbatched = await submit_all(stub, maker.many("unbatched", args.unbatched_labels, 0.9), 1)
        unbatched.pop("_calls")
        out["ingest_unbatched"] = unbatched
        say(f"ingest unbatched {unbatched['labels_per_s']:,.0f} labels/s ({unbatched['seconds']:.1f} s)")
        pushed = maker.many("push", args.push_rounds * args.push_batch, 0.9)
        batches = [pushed[i : i + args.push_batch] for i in range(0, len(pushed), args.push_batch)]
        out["push_latency"] = await push_latency(stub, batches, 0.05)
        say(f"push latency median {out['push_latency']['median_ms']:.1f} ms")
        # 3. claims
        out |= await claim_phases(stub, port, args, maker, say)
    with database(backend, args.postgres_url, "_direct") as url:
        out["ingest_direct"] = direct_submit(url, labels[: args.direct_labels], args.batch)
        say(f"ingest direct (Ledger.submit) {out['ingest_direct']['labels_per_s']:,.0f} labels/s")
    out["batched_over_unbatched"] = out["ingest_batched"]["labels_per_s"] / unbatched["labels_per_s"]
    out["grpc_over_direct_ingest"] = (
        ingest["first_labels"]["labels_per_s"] / out["ingest_direct"]["labels_per_s"]
    )
    out["grpc_over_direct_stream"] = out["stream"]["labels_per_s"] / out["stream_direct"]["labels_per_s"]
    out["service_settings"] = {"stream_batch": servicer.settings.stream_batch,
                               "stream_message_labels": servicer.settings.stream_message_labels}  # fmt: skip
    out["seconds"] = time.perf_counter() - started
    say(f"done in {out['seconds']:.0f} s")
    return out


# ---- report ----------------------------------------------------------------------------------------
def machine_and_versions(backends: list[str], admin_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import importlib.metadata as md

    cpu, ram = "", 0
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    with contextlib.suppress(OSError, StopIteration, ValueError):
        lines = Path("/proc/meminfo").read_text().splitlines()
        ram = int(next(line.split()[1] for line in lines if line.startswith("MemTotal:"))) * 1024
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    versions: dict[str, Any] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    versions |= {n: version(n) for n in ("charter", "sqlalchemy", "psycopg", "psycopg-binary", "grpcio",
                                          "protobuf", "alembic", "structlog")}  # fmt: skip
    from google.protobuf.internal import api_implementation

    versions["protobuf_implementation"] = api_implementation.Type()
    if "postgresql" in backends:
        import psycopg

        with psycopg.connect(admin_url, connect_timeout=5) as conn:
            versions["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            settings = conn.execute(
                "SELECT name, setting, unit FROM pg_settings WHERE name IN "
                "('shared_buffers', 'synchronous_commit', 'fsync', 'max_connections', 'wal_level')"
            ).fetchall()
            versions["postgresql_settings"] = {n: f"{s}{(' ' + u) if u else ''}" for n, s, u in settings}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return (
        {"cpus": os.cpu_count(), "cpu": cpu, "ram_gb": round(ram / 2**30, 1), "platform": platform.platform(),
         "load_average_at_start": load, "commit": commit},
        versions,
    )  # fmt: skip


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """measured / target for throughput, target / measured for latency: >= 1 means the target is met.
    The ingest target is PostgreSQL's; SQLite's ingest is shown against the same number."""
    out: dict[str, Any] = {}
    for backend, r in results.items():
        out[f"ingest_batched_{backend}"] = (
            r["ingest_batched"]["labels_per_s"] / TARGETS["ingest_labels_per_s_postgresql_batched"]
        )
        out[f"stream_{backend}"] = r["stream"]["labels_per_s"] / TARGETS["stream_labels_per_s"]
        out[f"claim_p99_{backend}"] = TARGETS["claim_p99_ms"] / r["claims"]["claim_ms"]["p99"]
        if "claims_paced" in r:
            out[f"claim_p99_paced_{backend}"] = TARGETS["claim_p99_ms"] / r["claims_paced"]["claim_ms"]["p99"]
    return out


def table(results: dict[str, Any]) -> str:
    def claim(key: str) -> Any:
        return lambda r: (
            "{p50:.1f} / {p95:.1f} / {p99:.1f} / {max:.1f}".format(**r[key]["claim_ms"]) if key in r else "-"
        )

    rows = [
        ("label size (bytes, mean)", lambda r: f"{r['label_bytes']['mean']:,.0f}"),
        ("ingest, batched Submit (labels/s)", lambda r: f"{r['ingest_batched']['labels_per_s']:,.0f}"),
        ("ingest, 1 label per Submit (labels/s)", lambda r: f"{r['ingest_unbatched']['labels_per_s']:,.0f}"),
        ("batched / unbatched", lambda r: f"{r['batched_over_unbatched']:.1f}x"),
        ("ingest, Ledger.submit direct (labels/s)", lambda r: f"{r['ingest_direct']['labels_per_s']:,.0f}"),
        ("stream, StreamLabels, default labels/message (labels/s)", lambda r: f"{r['stream']['labels_per_s']:,.0f}"),
        ("stream, StreamLabels, 1 label/message (labels/s)",
         lambda r: f"{r['stream_one_per_message']['labels_per_s']:,.0f}"),
        ("stream, accepted_after direct (labels/s)", lambda r: f"{r['stream_direct']['labels_per_s']:,.0f}"),
        ("bare gRPC stream ceiling, 1 / default per message (labels/s)",
         lambda r: " / ".join(f"{v['labels_per_s']:,.0f}" for k, v in r["stream_grpc_ceiling"].items() if k != "labels")
         if "stream_grpc_ceiling" in r else "-"),
        ("push latency, median (ms)", lambda r: f"{r['push_latency']['median_ms']:.1f}"),
        ("claim p50/p95/p99/max, 1 reviewer (ms)", claim("claims_one_reviewer")),
        ("claim p50/p95/p99/max, 20 back to back (ms)", claim("claims")),
        ("claim+decide cycles/s, 20 back to back", lambda r: f"{r['claims']['claims_per_s']:.0f}"),
        ("claim p50/p95/p99/max, 20 paced (ms)", claim("claims_paced")),
        ("backend wall time (s)", lambda r: f"{r['seconds']:.0f}"),
    ]  # fmt: skip
    backends = list(results)
    lines = ["| | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    lines += [f"| {name} | " + " | ".join(f(results[b]) for b in backends) + " |" for name, f in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--unbatched-labels", type=int, default=2000, help="baseline: one label per Submit")
    parser.add_argument("--direct-labels", type=int, default=20_000, help="Ledger.submit breakdown")
    parser.add_argument("--push-rounds", type=int, default=20)
    parser.add_argument("--push-batch", type=int, default=100)
    parser.add_argument("--reviewers", type=int, default=20)
    parser.add_argument("--claims-per-reviewer", type=int, default=50)
    parser.add_argument(
        "--paced-claims-per-reviewer",
        type=int,
        default=25,
        help="a second pass with think time between decisions (0 = skip it)",
    )
    parser.add_argument("--think-ms", type=float, default=500.0, help="mean think time of the paced pass")
    parser.add_argument(
        "--stream-message-labels",
        type=int,
        default=0,
        help="max_labels_per_message of the stream figure (0 = the service's default)",
    )
    parser.add_argument(
        "--ceiling-labels", type=int, default=50_000, help="bare gRPC stream ceiling (0 = skip)"
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ledger.json")
    args = parser.parse_args()
    args.direct_labels = min(args.direct_labels, args.labels)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(backends) - {"sqlite", "postgresql"}:
        raise SystemExit(f"--backends: unknown {sorted(unknown)}; use sqlite and/or postgresql")

    from charter.core.logging import configure_logging
    from charter.core.settings import LoggingSettings

    configure_logging(LoggingSettings(format="console", level="WARNING"))
    logging.getLogger("charter.rpc").setLevel(logging.ERROR)  # the cancelled following stream's line
    machine, versions = machine_and_versions(backends, args.postgres_url)
    maker = LabelMaker(load_pairs(), secrets.token_hex(4))
    results = {b: asyncio.run(run_backend(b, args, maker)) for b in backends}
    report = {
        "benchmark": "ledger",
        "machine": machine,
        "versions": versions,
        "config": {
            "labels": args.labels, "batch": args.batch, "unbatched_labels": args.unbatched_labels,
            "direct_labels": args.direct_labels, "push_rounds": args.push_rounds,
            "push_batch": args.push_batch, "reviewers": args.reviewers,
            "stream_message_labels": args.stream_message_labels or "service default",
            "claims_per_reviewer": args.claims_per_reviewer,
            "paced_claims_per_reviewer": args.paced_claims_per_reviewer, "think_ms": args.think_ms,
            "ceiling_labels": args.ceiling_labels, "backends": backends,
            "workload": "hh-rlhf harmless-base-test-dev pairs of 500-1500 chars (conversation + both "
                        "responses), one principle, two OrderScores, constitution/judge/provenance set; "
                        "ingest labels confidence 0.9 and swap-consistent (auto-accepted), claim labels "
                        "confidence 0.1 (human queue); routing audit_rate 0, overlap 1",
            "layout": "server (CharterServer + ReviewServicer, 16 ledger worker threads) and every client "
                      "in one Python process and event loop; one Submit in flight; PostgreSQL on the "
                      "same machine",
        },
        "results": results,
        "targets": {
            "ingest_labels_per_s_postgresql_batched": ">= 5000 (PostgreSQL, batched Submit)",
            "stream_labels_per_s": ">= 20000",
            "claim_p99_ms": "<= 50 under 20 concurrent reviewers",
        },
        "ratios_to_target": ratios(results),
        "ratios_note": "measured/target for throughput, target/measured for latency: >= 1 means met",
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(json.dumps(report["ratios_to_target"], indent=2))


if __name__ == "__main__":
    main()

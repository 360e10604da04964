"""Exactly-once delivery of the accepted-label stream while the consumer (`charter export --follow`)
and the server (`charter serve review`) are SIGKILLed at random points over 1,000 labels."""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

import grpc
import pytest
import yaml
from charter_proto.review.v1 import review_pb2 as rv
from charter_proto.review.v1 import review_pb2_grpc

from tests.support import ROOT, subprocess_env, tool
from tests.support.process import LoggedProcess
from tests.support.review import hh_labels

pytestmark = pytest.mark.e2e

SERVICE = (("authorization", "Bearer svc-token"),)
REVIEWER = (("authorization", "Bearer rev-token"),)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, config: Path, port: int) -> None:
        self.config, self.port, self.proc = config, port, None
        self.starts = 0

    def start(self) -> None:
        self.proc = LoggedProcess(
            [tool("charter"), "serve", "review", "--config", str(self.config)], cwd=ROOT, env=subprocess_env()
        )
        try:
            self.proc.wait_for("server.started", timeout=60)
        except AssertionError:
            self.proc.stop()
            raise
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Consumer:
    def __init__(self, port: int, out: Path) -> None:
        self.port, self.out, self.proc = port, out, None

    def start(self) -> None:
        args = [
            tool("charter"),
            "export",
            "--review",
            f"127.0.0.1:{self.port}",
            "--token",
            "svc-token",
            "--format",
            "jsonl",
            "--out",
            str(self.out),
            "--follow",
        ]
        self.proc = LoggedProcess(args, cwd=ROOT, env=subprocess_env(CHARTER_LOGGING__FORMAT="json"))

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def call_with_retry(fn, request, metadata, attempts: int = 20):
    for _ in range(attempts):
        try:
            return fn(request, metadata=metadata, timeout=5, wait_for_ready=True)
        except grpc.RpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            time.sleep(0.1)
    raise AssertionError("the review service did not come back")


@pytest.mark.timeout(600)
def test_stream_survives_random_kills_exactly_once_in_order(tmp_path: Path, ledger_url: str) -> None:
    rng = random.Random(1234)
    port = free_port()
    config = tmp_path / "review.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": port, "metrics_port": None, "drain_seconds": 1},
                "logging": {"format": "json", "level": "INFO"},
                "review": {
                    "database_url": ledger_url,
                    "web_port": None,
                    "poll_seconds": 0.1,
                    "routing": {"audit_rate": 0.0},
                    "tokens": [
                        {"name": "pipeline", "role": "service", "token": "svc-token"},
                        {"name": "rita", "role": "reviewer", "token": "rev-token"},
                    ],
                },
            }
        )
    )
    out = tmp_path / "stream.jsonl"
    server, consumer = Server(config, port), Consumer(port, out)
    try:
        server.start()
        consumer.start()
        labels = hh_labels(1000, confidence=0.9)
        for i, label in enumerate(labels):
            if i % 10 == 0:  # one in ten goes to a person first, and is accepted later, out of ledger order
                label.confidence, label.p_a = 0.1, 0.55
        kills = {"server": 0, "consumer": 0}
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = review_pb2_grpc.ReviewServiceStub(channel)
            position = 0
            while position < len(labels):
                size = rng.randint(10, 60)
                call_with_retry(
                    stub.Submit, rv.SubmitRequest(labels=labels[position : position + size]), SERVICE
                )
                position += size
                for _ in range(rng.randint(0, 4)):  # a reviewer decides some queued items
                    item = call_with_retry(stub.Claim, rv.ClaimRequest(), REVIEWER).item
                    if item.item_id:
                        decide = rv.DecideRequest(
                            item_id=item.item_id, lease_id=item.lease_id, choice=rv.HUMAN_CHOICE_A
                        )
                        call_with_retry(stub.Decide, decide, REVIEWER)
                roll = rng.random()
                victims = {0: [consumer], 1: [server], 2: [server, consumer]}.get(int(roll / 0.12), [])
                if server in victims and rng.random() < 0.5:  # mid-call: the next batch may or may not commit
                    stub.Submit.future(
                        rv.SubmitRequest(labels=labels[position : position + 30]), metadata=SERVICE
                    )
                    time.sleep(rng.uniform(0, 0.02))
                for victim in victims:
                    victim.kill()
                    kills["server" if victim is server else "consumer"] += 1
                time.sleep(rng.uniform(0, 0.3) if victims else 0)
                for victim in victims:
                    victim.start()
            while True:  # the rest of the human queue
                item = call_with_retry(stub.Claim, rv.ClaimRequest(), REVIEWER).item
                if not item.item_id:
                    break
                decide = rv.DecideRequest(
                    item_id=item.item_id, lease_id=item.lease_id, choice=rv.HUMAN_CHOICE_A
                )
                call_with_retry(stub.Decide, decide, REVIEWER)
            last = call_with_retry(stub.Stats, rv.StatsRequest(), SERVICE).last_cursor.sequence

        deadline = time.monotonic() + 60
        records: list[dict] = []
        while time.monotonic() < deadline:
            text = out.read_text(encoding="utf-8") if out.exists() else ""
            lines = text.splitlines()[: text.count("\n")]  # not a line the consumer is still writing
            records = [json.loads(line) for line in lines if line.strip()]
            if records and records[-1]["sequence"] == last:
                break
            time.sleep(0.2)
    finally:
        consumer.kill()
        server.kill()
    print(f"kills: {kills}, server starts: {server.starts}")
    assert kills["server"] >= 2 and kills["consumer"] >= 2, kills
    sequences = [r["sequence"] for r in records]
    assert sequences == sorted(set(sequences)), "a label was delivered twice or out of order"
    assert sequences[-1] == last
    assert len(records) == 1000, f"{len(records)} of 1000 labels delivered ({kills})"
    assert {r["label_id"] for r in records} == {label.id for label in labels}
    assert sum(r["label_source"] == "human" for r in records) == 100

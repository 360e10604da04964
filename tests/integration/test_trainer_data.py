"""A run's data: the review stream over a cursor range (each label once, human overrides applied,
labels accepted while the run waits included), Charter exports, hh-rlhf files, SL-CAI SFT rows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from charter.api.review import export_rows, ledger_labels
from charter.app.catalog import SERVICES
from charter.app.trainer_worker import read_label_stream
from charter.core.server import CharterServer
from charter.core.settings import RoutingSettings, ServerSettings, load_settings
from charter.review.export import write_file
from charter.review.store import Ledger
from charter.trainer.data import from_files, sft_rows
from charter_proto.review.v1 import review_pb2 as rv
from charter_proto.review.v1 import review_pb2_grpc

from tests.support import SHARED_DATA
from tests.support.review import hh_labels, submit

pytestmark = pytest.mark.integration
SERVICE = (("authorization", "Bearer svc"),)


@pytest.fixture
async def review(tmp_path: Path):
    settings = load_settings(
        review={
            "database_url": f"sqlite:///{tmp_path / 'review.db'}",
            "tokens": [
                {"name": "trainer", "role": "service", "token": "svc"},
                {"name": "ann", "role": "reviewer", "token": "ann"},
            ],
            "web_port": None,
            "poll_seconds": 0.05,
            "routing": {"audit_rate": 0.0},
        }
    )
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None),
        [SERVICES["review"].registration_for_settings(settings)],
    )
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield f"127.0.0.1:{port}", review_pb2_grpc.ReviewServiceStub(channel)
    await server.stop(0)


async def test_stream_cursor_range_each_label_once_with_overrides(review):
    address, stub = review
    labels = hh_labels(30, confidence=0.9)
    labels[0].confidence = labels[1].confidence = 0.1  # people decide these two: B, then a tie
    await stub.Submit(rv.SubmitRequest(labels=labels[:20]), metadata=SERVICE)
    reviewer = (("authorization", "Bearer ann"),)
    for choice in (rv.HUMAN_CHOICE_B, rv.HUMAN_CHOICE_TIE):
        item = (await stub.Claim(rv.ClaimRequest(), metadata=reviewer)).item
        await stub.Decide(
            rv.DecideRequest(item_id=item.item_id, lease_id=item.lease_id, choice=choice), metadata=reviewer
        )

    first = await read_label_stream(address, "svc", 0, None, None)
    assert (first.cursor_start, first.cursor_end, first.labels_read) == (0, 20, 20)
    assert len(first.rows) == 19 and first.skipped == {"tie": 1}
    overridden = next(r for r in first.rows if r["label_id"] == labels[0].id)
    assert (
        overridden["chosen"][0]["content"] == labels[0].response_b and overridden["label_source"] == "human"
    )

    # a run that wants 10 more labels waits for them while they are accepted
    waiting = asyncio.create_task(
        read_label_stream(address, "svc", first.cursor_end, first.cursor_end + 10, None)
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await stub.Submit(rv.SubmitRequest(labels=labels[20:]), metadata=SERVICE)
    second = await asyncio.wait_for(waiting, 10)
    assert (second.cursor_start, second.cursor_end) == (20, 30)
    ids = [r["label_id"] for r in first.rows + second.rows]
    assert len(ids) == len(set(ids)) == 29  # each label once across both runs (the tie left out)
    assert {r["label_id"] for r in second.rows} == {label.id for label in labels[20:]}


def test_files_keep_soft_labels_and_read_hh_rlhf(tmp_path: Path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", RoutingSettings(audit_rate=0.0))
    submit(ledger, hh_labels(12, confidence=0.6))
    export = tmp_path / "accepted.parquet"
    write_file(export_rows(ledger_labels(ledger), "parquet"), "parquet", export)
    ledger.close()
    exported = from_files([export])
    assert len(exported.rows) == 12 and all(r["p_chosen"] == pytest.approx(0.8) for r in exported.rows)
    hh = from_files([SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"])
    assert len(hh.rows) > 1000 and all(r["p_chosen"] == 1.0 for r in hh.rows)
    assert hh.rows[0]["prompt"][-1]["role"] == "user" and hh.rows[0]["chosen"][0]["role"] == "assistant"


def test_sft_rows_from_an_sl_cai_output(tmp_path: Path):
    folder = tmp_path / "sl-cai"
    folder.mkdir()
    rows = [
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
            "key": "k",
        }
    ]
    (folder / "sft.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert sft_rows([folder]) == [{"messages": rows[0]["messages"]}]

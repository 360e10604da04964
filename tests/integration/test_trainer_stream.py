"""A run fed by the review service's accepted-label stream: started before all its labels exist, it
waits for the rest (added while it runs), records the cursor range it trained on, uses each label
once; a follow-up run from that cursor_end takes only the labels accepted since."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from charter.core.settings import load_settings
from charter_proto.review.v1 import review_pb2 as rv
from charter_proto.review.v1 import review_pb2_grpc
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import load_pairs
from tests.support.review import hh_label
from tests.support.tiny import save_tiny_lm
from tests.support.trainer import run_spec, serving, trainer_service, trainer_settings, wait_for_event, watch

pytestmark = pytest.mark.integration

TOKEN = "svc-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def labels(start: int, n: int) -> list:
    pairs = load_pairs(start + n)
    # every third label a tie: read (the cursor moves past it) but not trained on
    return [
        hh_label(pairs[i], i, confidence=0.0 if i % 3 == 2 else 0.9, a_wins=i % 2 == 0)
        for i in range(start, start + n)
    ]


def stream_spec(tiny_lm: Path, from_cursor: int, to_cursor: int | None) -> tp.RunSpec:
    spec = run_spec(
        tp.ALGORITHM_REWARD_MODEL, tiny_lm, per_device_train_batch_size=2, learning_rate=1e-3, max_length=1024,
        logging_steps=1, max_steps=2, save_steps=1000,
    )  # fmt: skip
    spec.data.label_stream.from_cursor.sequence = from_cursor
    if to_cursor is not None:
        spec.data.label_stream.to_cursor.sequence = to_cursor
    return spec


def trained_on(runs_dir: Path, run_id: str) -> list[str]:
    rows = (runs_dir / run_id / "data" / "rows.jsonl").read_text().splitlines()
    return [json.loads(r)["label_id"] for r in rows]


async def test_a_run_fed_by_the_label_stream(tmp_path, embedded_model):
    tiny_lm = save_tiny_lm(tmp_path / "lm", embedded_model)
    review_settings = load_settings(
        review={
            "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "tokens": [{"name": "trainer", "role": "service", "token": TOKEN}],
            "web_port": None,
            "poll_seconds": 0.05,
            # accept everything, even p_a = 0.5 (a tie the stream carries and the trainer skips)
            "routing": {"audit_rate": 0.0, "accept_confidence": 0.0},
        }
    )
    async with serving("review", review_settings) as (channel, port):
        ledger = review_pb2_grpc.ReviewServiceStub(channel)
        await ledger.Submit(rv.SubmitRequest(labels=labels(0, 12)), metadata=AUTH)
        settings = trainer_settings(tmp_path, review_address=f"127.0.0.1:{port}", review_token=TOKEN)
        runs_dir = tmp_path / "runs"
        async with trainer_service(settings) as stub:
            # up to cursor 30: 18 labels are not there yet
            run = (await stub.StartRun(tp.StartRunRequest(spec=stream_spec(tiny_lm, 0, 30)))).run
            await wait_for_event(stub, run.id, "state")  # the worker is starting
            await ledger.Submit(rv.SubmitRequest(labels=labels(12, 12)), metadata=AUTH)
            await ledger.Submit(rv.SubmitRequest(labels=labels(24, 10)), metadata=AUTH)
            events = await watch(stub, run.id)
            first = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
            assert first.state == tp.RUN_STATE_SUCCEEDED, first.reason
            data = next(e.data for e in events if e.WhichOneof("kind") == "data")
            assert (data.cursor_start.sequence, data.cursor_end.sequence) == (0, 30)
            assert (first.cursor_start.sequence, first.cursor_end.sequence) == (0, 30)
            assert data.labels_read == 30 and data.skipped["tie"] == 10 and data.rows == first.rows == 20

            # the follow-up run starts where the first ended and takes what is there now
            follow = stream_spec(tiny_lm, first.cursor_end.sequence, None)
            second = (await stub.StartRun(tp.StartRunRequest(spec=follow))).run
            await watch(stub, second.id)
            second = (await stub.GetRun(tp.GetRunRequest(run_id=second.id))).run
            assert second.state == tp.RUN_STATE_SUCCEEDED, second.reason
            assert (second.cursor_start.sequence, second.cursor_end.sequence) == (30, 34)

        stream = ledger.StreamLabels(rv.StreamLabelsRequest(), metadata=AUTH)
        accepted = [label async for response in stream for label in response.labels]
    by_sequence = {a.sequence: a for a in accepted}
    assert sorted(by_sequence) == list(range(1, 35))
    not_tie = lambda seqs: {by_sequence[s].label.id for s in seqs if by_sequence[s].choice != 3}  # noqa: E731
    first_ids, second_ids = trained_on(runs_dir, run.id), trained_on(runs_dir, second.id)
    assert len(first_ids) == len(set(first_ids)) == 20  # each label once
    assert set(first_ids) == not_tie(range(1, 31))
    assert set(second_ids) == not_tie(range(31, 35)) and not set(first_ids) & set(second_ids)

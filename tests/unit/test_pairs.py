"""Pair sources: hh-rlhf, prompt/chosen/rejected and response_a/response_b (JSONL, Parquet), SL-CAI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from charter.core.errors import InvalidArgument, NotFound
from charter.datasets.pairs import PairRow, detect_pairs, pair_key, read_pairs
from charter.datasets.sources import RowError

from tests.support import SHARED_DATA

HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"


def pairs(path: Path, **kw) -> list[PairRow | RowError]:
    return list(read_pairs(path, **kw))


def test_hh_rlhf_pairs_keep_the_human_label_and_shuffle_positions() -> None:
    rows = [r for r in pairs(HH, limit=200) if isinstance(r, PairRow)]
    assert len(rows) >= 190
    positions = [r.human for r in rows]
    assert 0.35 < positions.count("A") / len(rows) < 0.65  # seeded coin, not always A
    raw = [json.loads(line) for line in __import__("gzip").open(HH, "rt")][:200]
    by_index = {r.index: r for r in rows}
    for i, record in enumerate(raw):
        if i in by_index:
            r = by_index[i]
            chosen = r.response_a if r.human == "A" else r.response_b
            assert record["chosen"].endswith(chosen)
            assert r.conversation[-1].role == "user"
    again = [r for r in pairs(HH, limit=200) if isinstance(r, PairRow)]
    assert [r.human for r in again] == positions  # deterministic
    other = [r for r in pairs(HH, limit=200, seed=9) if isinstance(r, PairRow)]
    assert [r.human for r in other] != positions
    assert detect_pairs(HH) == "hh-rlhf"


def test_chosen_rejected_and_response_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "user", "content": "q2"}], "chosen": [{"role": "assistant", "content": "g"}],
         "rejected": [{"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "q3"}], "response_a": "x", "response_b": "y", "preferred": "B"},
        {"prompt": "q4", "response_a": "x", "response_b": "y"},
        {"prompt": "q5", "response_a": "x", "response_b": "y", "preferred": "C"},
        {"prompt": "q6", "chosen": "", "rejected": "b"},
        {"prompt": "q7"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = pairs(path)
    ok = [r for r in got if isinstance(r, PairRow)]
    errors = {r.index: r.reason for r in got if isinstance(r, RowError)}
    assert [r.index for r in ok] == [0, 1, 2, 3]
    assert {ok[0].response_a, ok[0].response_b} == {"good", "bad"}
    assert (ok[0].response_a if ok[0].human == "A" else ok[0].response_b) == "good"
    assert ok[1].conversation[0].content == "q2" and {ok[1].response_a, ok[1].response_b} == {"g", "b"}
    assert (ok[2].response_a, ok[2].response_b, ok[2].human) == ("x", "y", "B")
    assert ok[3].human is None
    assert "must be A or B" in errors[4] and "empty response" in errors[5] and "needs 'chosen'" in errors[6]
    assert detect_pairs(path) == "jsonl"

    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q1", "chosen": "good", "rejected": "bad"}]), parquet)
    (row,) = pairs(parquet)
    assert isinstance(row, PairRow) and row.key == ok[0].key


def test_sl_cai_output_gives_initial_versus_revision(tmp_path: Path) -> None:
    record = {"key": "k", "prompt": [{"role": "user", "content": "q"}], "samples": [
        {"sample_index": 0, "status": "ok", "initial_response": "first", "final_revision": "better"},
        {"sample_index": 1, "status": "truncated", "initial_response": "a", "final_revision": ""},
        {"sample_index": 2, "status": "ok", "initial_response": "same", "final_revision": "same"},
    ]}  # fmt: skip
    (tmp_path / "records.jsonl").write_text(json.dumps(record) + "\n" + "{not json\n")
    got = pairs(tmp_path)
    ok = [r for r in got if isinstance(r, PairRow)]
    assert len(ok) == 1 and {ok[0].response_a, ok[0].response_b} == {"first", "better"}
    at = ok[0].origin["revision_at"]
    assert (ok[0].response_a if at == "A" else ok[0].response_b) == "better"
    assert any(isinstance(r, RowError) and "not an SL-CAI record" in r.reason for r in got)


def test_pair_key_is_order_free_and_content_derived() -> None:
    from charter.inference.types import Message

    conv = (Message(role="user", content="q"),)
    assert pair_key(conv, "a", "b") == pair_key(conv, "b", "a") != pair_key(conv, "a", "c")


def test_missing_and_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        pairs(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InvalidArgument):
        pairs(tmp_path / "x.txt")

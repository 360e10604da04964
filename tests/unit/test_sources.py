"""Prompt sources: JSONL, CSV, Parquet and hh-rlhf; a bad row is an error record, the rest go on."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from charter.core.errors import NotFound
from charter.datasets.sources import PromptRow, RowError, detect, hh_human_turns, read_rows


def test_csv_with_a_prompt_column_and_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(b'prompt,note\n"How do I bake bread?",a\n"caf\xe9",b\n"",c\n"Say hi",d\n')
    rows = list(read_rows(path))
    assert [type(r).__name__ for r in rows] == ["PromptRow", "RowError", "RowError", "PromptRow"]
    assert rows[0].messages[0].content == "How do I bake bread?"
    assert "invalid UTF-8" in rows[1].reason and "empty" in rows[2].reason


def test_parquet_with_a_messages_column(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    table = pa.Table.from_pylist(
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye?"},
                ]
            },
            {
                "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
            },  # ends with the assistant
        ]
    )
    pq.write_table(table, path)
    good, bad = list(read_rows(path))
    assert isinstance(good, PromptRow) and [m.role for m in good.messages] == ["user", "assistant", "user"]
    assert isinstance(bad, RowError) and "last message must be the user's" in bad.reason


def test_jsonl_messages_as_json_text_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [{"messages": json.dumps([{"role": "user", "content": f"q{i}"}])} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = list(read_rows(path, limit=3))
    assert [r.messages[0].content for r in got] == ["q0", "q1", "q2"]
    assert len({r.key for r in got}) == 3 and got[0].key == next(read_rows(path)).key  # stable keys


def test_hh_rlhf_is_detected_and_split(shared_data: Path) -> None:
    path = shared_data / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"
    assert detect(path) == "hh-rlhf"
    first = next(read_rows(path))
    assert first.messages[0].role == "user" and first.messages[-1].role == "user"
    turns = hh_human_turns("\n\nHuman: one\n\nAssistant: two\n\nHuman: three\n\nAssistant: final")
    assert [(m.role, m.content) for m in turns] == [("user", "one"), ("assistant", "two"), ("user", "three")]
    with pytest.raises(ValueError, match="no '\\\\n\\\\nAssistant:' turn"):
        hh_human_turns("\n\nHuman: only")


def test_missing_source_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        list(read_rows(tmp_path / "nope.jsonl"))

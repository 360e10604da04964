"""A run's training data: preference pairs from the review service's accepted-label stream (a cursor
range, each label once) or from files, and SFT conversations from SL-CAI outputs.

Preference rows are TRL's conversational format — `prompt` (messages), `chosen`, `rejected` (one
assistant message each) — plus `p_chosen`, the soft label of the chosen response (1.0 where a file
has only hard labels). Rows from the stream carry the effective label: a human decision overrides
the AI's (the review service applies it). Ties have no chosen response and are left out, but still
count toward the cursor range, so a follow-up run starts after them.

Protocol-free: the stream's labels come in as (sequence, preference row) pairs from a source the
caller opens (the worker: `charter.client.review.ReviewClient.stream_labels` through
`charter.api.review.preference_row`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.core.errors import InvalidArgument

StreamRow = tuple[int, dict[str, Any] | None]
"""(stream sequence, preference row); None where the label has no chosen response (a tie)."""


@dataclass
class PreferenceData:
    rows: list[dict[str, Any]]
    cursor_start: int = 0
    """The stream position the data starts after (stream sources)."""
    cursor_end: int = 0
    """The last stream sequence read (stream sources): a follow-up run starts here."""
    labels_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Labels left out, by reason (e.g. `tie`)."""


def stream_rows(labels: Iterable[StreamRow], cursor_start: int) -> PreferenceData:
    data = PreferenceData([], cursor_start=cursor_start, cursor_end=cursor_start)
    for sequence, row in labels:  # the stream is ordered and holds each label once
        data.cursor_end = sequence
        data.labels_read += 1
        if row is None:
            data.skipped["tie"] = data.skipped.get("tie", 0) + 1
            continue
        data.rows.append(row)
    return data


async def from_stream(
    labels: AsyncIterable[StreamRow], from_cursor: int = 0, to_cursor: int | None = None
) -> PreferenceData:
    """The labels of an accepted-label stream read after `from_cursor` up to `to_cursor` (None: until
    the stream ends, i.e. what is there now). With `to_cursor` the stream should follow (wait for
    labels up to `to_cursor` that are not accepted yet): reading stops at it."""
    read = []
    async for sequence, row in labels:
        if to_cursor is not None and sequence > to_cursor:
            break
        read.append((sequence, row))
        if to_cursor is not None and sequence >= to_cursor:
            break
    data = stream_rows(read, from_cursor)
    if to_cursor is not None and read:
        data.cursor_end = max(data.cursor_end, to_cursor)
    return data


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table_rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return table_rows
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        import gzip

        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    raise InvalidArgument(
        f"{path}: expected a .jsonl, .jsonl.gz or .parquet file", field="spec.data.files.paths"
    )


def _preference(row: dict[str, Any], where: str) -> dict[str, Any]:
    if {"prompt", "chosen", "rejected"} <= set(row):
        prompt = row["prompt"]
        chosen, rejected = row["chosen"], row["rejected"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(chosen, str):
            chosen = [{"role": "assistant", "content": chosen}]
        if isinstance(rejected, str):
            rejected = [{"role": "assistant", "content": rejected}]
        p = row.get("p_chosen")
        return {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "p_chosen": 1.0 if p is None else float(p),
        }
    raise InvalidArgument(
        f"{where}: not a preference row (needs prompt, chosen, rejected)", field="spec.data.files"
    )


def _hh_rows(path: Path, seed: int) -> list[dict[str, Any]]:
    """hh-rlhf transcripts: the human-chosen reply is `chosen` (a hard label, p_chosen 1)."""
    from charter.datasets.pairs import PairRow, read_pairs

    rows = []
    for pair in read_pairs(path, "hh-rlhf", seed=seed):
        if not isinstance(pair, PairRow):
            continue  # a malformed transcript
        a_chosen = pair.human == "A"
        chosen, rejected = (
            (pair.response_a, pair.response_b) if a_chosen else (pair.response_b, pair.response_a)
        )
        rows.append(
            {
                "prompt": [m.model_dump() for m in pair.conversation],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "p_chosen": 1.0,
            }
        )
    return rows


def from_files(paths: Iterable[str | Path], seed: int = 0) -> PreferenceData:
    """Preference rows from Charter exports / RL-CAI datasets (prompt, chosen, rejected, p_chosen), any
    TRL preference file (hard labels), or hh-rlhf transcripts."""
    from charter.datasets.pairs import detect_pairs

    rows = []
    for path in map(Path, paths):
        if path.suffix != ".parquet" and detect_pairs(path) == "hh-rlhf":
            rows += _hh_rows(path, seed)
            continue
        for i, row in enumerate(_read_rows(path)):
            rows.append(_preference(row, f"{path}:{i + 1}"))
    return PreferenceData(rows, labels_read=len(rows))


def sft_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Conversational SFT rows (`messages`) from SL-CAI outputs (`sft.jsonl` / `sft.parquet`, or an
    output folder holding them)."""
    rows = []
    for path in map(Path, paths):
        if path.is_dir():
            path = path / "sft.jsonl"
        for i, row in enumerate(_read_rows(path)):
            if not isinstance(row.get("messages"), list) or not row["messages"]:
                raise InvalidArgument(f"{path}:{i + 1}: an SFT row needs `messages`", field="spec.data.files")
            rows.append({"messages": row["messages"]})
    return rows

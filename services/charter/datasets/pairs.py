"""Pair sources for the judge: hh-rlhf transcripts, prompt/chosen/rejected or response_a/response_b
files (JSONL or Parquet), and SL-CAI outputs (initial response vs final revision).

Which response is shown as A is drawn per pair from the seed (a fixed, content-keyed coin), so a
file whose first column is always the better one does not hand the judge the answer by position;
`human` records which one the file prefers, when it says.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from charter.constitution.sampling import rng_for
from charter.core.errors import InvalidArgument, NotFound
from charter.datasets.sources import RowError, hh_human_turns, row_messages, text_lines
from charter.inference.types import Message

PairFormat = Literal["auto", "hh-rlhf", "jsonl", "parquet", "sl-cai"]
_REPLY = "\n\nAssistant:"


@dataclass(frozen=True)
class PairRow:
    index: int
    key: str
    conversation: tuple[Message, ...]
    response_a: str
    response_b: str
    human: Literal["A", "B"] | None = None
    """Which response the source prefers (the human label of hh-rlhf, `chosen`, or `preferred`)."""
    origin: dict[str, Any] = field(default_factory=dict)


def pair_key(conversation: tuple[Message, ...], one: str, two: str) -> str:
    """Content-derived and order-free: the same two responses to the same conversation are one pair."""
    text = "\x1e".join(f"{m.role}\x1f{m.content}" for m in conversation)
    text += "\x1d" + "\x1d".join(sorted((one, two)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _place(
    index: int,
    conversation: tuple[Message, ...],
    preferred: str,
    other: str,
    seed: int,
    origin: dict[str, Any],
) -> PairRow:
    """A pair whose preferred response is known: put it at A or B by a seeded coin."""
    key = pair_key(conversation, preferred, other)
    if rng_for(seed, "position", key).random() < 0.5:
        return PairRow(index, key, conversation, preferred, other, "A", origin)
    return PairRow(index, key, conversation, other, preferred, "B", origin)


def split_hh(transcript: str) -> tuple[str, str]:
    cut = transcript.rfind(_REPLY)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn in the transcript")
    return transcript[:cut], transcript[cut + len(_REPLY) :].strip()


def _hh(index: int, record: Any, seed: int) -> PairRow:
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), str) for k in ("chosen", "rejected")
    ):
        raise ValueError("an hh-rlhf row needs 'chosen' and 'rejected' transcripts")
    prefix, chosen = split_hh(record["chosen"])
    other_prefix, rejected = split_hh(record["rejected"])
    if prefix != other_prefix:
        raise ValueError("the chosen and rejected transcripts differ before the last assistant reply")
    if not chosen or not rejected:
        raise ValueError("an empty final reply")
    conversation = hh_human_turns(record["chosen"])
    return _place(index, conversation, chosen, rejected, seed, {"source_index": index})


def _text(value: Any, name: str) -> str:
    """A response as text: a string, or a conversational list whose last message is the assistant's."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        last = value[-1]
        content = last.get("content")
        if last.get("role") == "assistant" and isinstance(content, str):
            return content
    raise ValueError(f"column {name!r} must be text or a list of messages ending with the assistant's")


def _table_row(index: int, row: Any, seed: int) -> PairRow:
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    if isinstance(row.get("prompt"), list):  # TRL's conversational format: the prompt is messages
        conversation = row_messages({"messages": row["prompt"]})
    else:
        conversation = row_messages(row)
    if "chosen" in row and "rejected" in row:
        chosen, rejected = _text(row["chosen"], "chosen"), _text(row["rejected"], "rejected")
        if not chosen.strip() or not rejected.strip():
            raise ValueError("an empty response")
        return _place(index, conversation, chosen, rejected, seed, {"source_index": index})
    if "response_a" in row and "response_b" in row:
        a, b = _text(row["response_a"], "response_a"), _text(row["response_b"], "response_b")
        if not a.strip() or not b.strip():
            raise ValueError("an empty response")
        preferred = row.get("preferred")
        if preferred not in (None, "A", "B"):
            raise ValueError(f"column 'preferred' must be A or B, got {preferred!r}")
        return PairRow(
            index, pair_key(conversation, a, b), conversation, a, b, preferred, {"source_index": index}
        )
    raise ValueError("needs 'chosen' and 'rejected' columns, or 'response_a' and 'response_b'")


def _sl_cai(path: Path, seed: int) -> Iterator[PairRow | RowError]:
    """(initial response, final revision) of every sample whose critique/revision succeeded."""
    records = path / "records.jsonl" if path.is_dir() else path
    index = 0
    with records.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                conversation = tuple(Message(**m) for m in record["prompt"])
                samples = record["samples"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                yield RowError(index, f"not an SL-CAI record: {err}")
                index += 1
                continue
            for sample in samples:
                initial, revision = sample.get("initial_response", ""), sample.get("final_revision", "")
                if (
                    sample.get("status") == "ok"
                    and initial.strip()
                    and revision.strip()
                    and initial != revision
                ):
                    key = pair_key(conversation, initial, revision)
                    first = rng_for(seed, "position", key).random() < 0.5
                    a, b = (revision, initial) if first else (initial, revision)
                    origin = {"sl_cai_key": record.get("key"), "sample_index": sample.get("sample_index"),
                              "revision_at": "A" if first else "B"}  # fmt: skip
                    yield PairRow(index, key, conversation, a, b, None, origin)
                index += 1


def detect_pairs(path: Path) -> PairFormat:
    if path.is_dir() or path.name == "records.jsonl":
        return "sl-cai"
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            first = f.readline()
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return "jsonl"
        if isinstance(row, dict) and "chosen" in row and "prompt" not in row and "messages" not in row:
            return "hh-rlhf"
        return "jsonl"
    raise InvalidArgument(
        f"{path}: cannot tell the pair format from the name; set the format", value=str(path)
    )


def read_pairs(
    path: str | Path, fmt: PairFormat = "auto", limit: int | None = None, seed: int = 0
) -> Iterator[PairRow | RowError]:
    """Pairs (or per-row errors) from `path`; `limit` counts source rows."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"pair source {path} does not exist", field="pairs.path", value=str(path))
    fmt = detect_pairs(path) if fmt == "auto" else fmt
    if fmt == "sl-cai":
        rows: Iterator[PairRow | RowError] = _sl_cai(path, seed)
    elif fmt == "parquet":
        rows = _parquet(path, seed)
    else:
        rows = _lines(path, fmt, seed)
    for item in rows:
        if limit is not None and item.index >= limit:
            return
        yield item


def _checked(index: int, build: Callable[[], PairRow]) -> PairRow | RowError:
    try:
        return build()
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        return RowError(index, str(err))


def _parquet(path: Path, seed: int) -> Iterator[PairRow | RowError]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield _checked(i, functools.partial(_table_row, i, row, seed))


def _lines(path: Path, fmt: PairFormat, seed: int) -> Iterator[PairRow | RowError]:
    build = _hh if fmt == "hh-rlhf" else _table_row
    for index, line in text_lines(path):
        if isinstance(line, RowError):
            yield line
        else:
            yield _checked(index, functools.partial(_decoded, build, index, line, seed))


def _decoded(build: Callable[[int, Any, int], PairRow], index: int, line: str, seed: int) -> PairRow:
    return build(index, json.loads(line), seed)

"""Prompt sources: JSONL / CSV / Parquet with a `prompt` or `messages` column, and hh-rlhf transcripts.

A bad row becomes a `RowError` with its reason; the other rows go on.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from charter.core.errors import InvalidArgument, NotFound
from charter.inference.types import Message

Format = Literal["auto", "jsonl", "csv", "parquet", "hh-rlhf"]
_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class PromptRow:
    index: int
    key: str
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class RowError:
    index: int
    reason: str
    key: str = ""


def prompt_key(messages: tuple[Message, ...]) -> str:
    """Content-derived id: the same prompt is the same key in every run."""
    text = "\x1e".join(f"{m.role}\x1f{m.content}" for m in messages)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _open_text(path: Path) -> io.TextIOWrapper:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # noqa: SIM115 - caller closes
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def detect(path: Path) -> Format:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        with _open_text(path) as f:
            first = f.readline()
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return "jsonl"
        if isinstance(row, dict) and "chosen" in row and "rejected" in row and "prompt" not in row:
            return "hh-rlhf"
        return "jsonl"
    raise InvalidArgument(f"{path}: cannot tell the format from the name; set source.format", value=str(path))


def hh_human_turns(transcript: str) -> tuple[Message, ...]:
    """The conversation before the final assistant reply, from an hh-rlhf transcript.

    The prefix is everything up to the last "\\n\\nAssistant:"; its turns become messages. The SL-CAI
    prompt is that conversation (human turns and any earlier assistant turns), ending with a human turn.
    """
    cut = transcript.rfind("\n\nAssistant:")
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn in the transcript")
    prefix = transcript[:cut]
    messages: list[Message] = []
    for chunk in prefix.split("\n\nHuman:")[1:]:
        human, _, assistant = chunk.partition("\n\nAssistant:")
        messages.append(Message(role="user", content=human.strip()))
        if assistant.strip():
            messages.append(Message(role="assistant", content=assistant.strip()))
    if not messages or messages[-1].role != "user" or not messages[-1].content:
        raise ValueError("the transcript's prefix does not end with a human turn")
    return tuple(messages)


def row_messages(row: Any) -> tuple[Message, ...]:
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    if "messages" in row and row["messages"] is not None:
        value = row["messages"]
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, list) or not value:
            raise ValueError("column 'messages' must be a non-empty list of {role, content}")
        out = []
        for i, m in enumerate(value):
            if (
                not isinstance(m, dict)
                or m.get("role") not in _ROLES
                or not isinstance(m.get("content"), str)
            ):
                raise ValueError(f"messages[{i}] must be {{role: system|user|assistant, content: str}}")
            out.append(Message(role=m["role"], content=m["content"]))
        if out[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return tuple(out)
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            raise ValueError(f"column 'prompt' must be text, got {type(prompt).__name__}")
        return (Message(role="user", content=prompt),)
    raise ValueError(f"no 'prompt' or 'messages' column (columns: {', '.join(sorted(map(str, row)))})")


def _checked(index: int, build: Any) -> PromptRow | RowError:
    try:
        messages = build()
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        return RowError(index, str(err))
    if not any(m.content.strip() for m in messages):
        return RowError(index, "the prompt is empty")
    return PromptRow(index, prompt_key(messages), messages)


def read_rows(
    path: str | Path, fmt: Format = "auto", limit: int | None = None
) -> Iterator[PromptRow | RowError]:
    path = Path(path)
    if not path.exists():
        raise NotFound(f"prompt source {path} does not exist", field="source.path", value=str(path))
    fmt = detect(path) if fmt == "auto" else fmt
    for count, item in enumerate(_rows(path, fmt), start=1):
        yield item
        if limit is not None and count >= limit:
            return


def _has_bad_bytes(row: dict[str, Any]) -> bool:
    return any(isinstance(v, str) and any("\udc80" <= c <= "\udcff" for c in v) for v in row.values())


def _rows(path: Path, fmt: Format) -> Iterator[PromptRow | RowError]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield _checked(i, lambda row=row: row_messages(row))
        return
    if fmt == "csv":
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as raw:
            # undecodable bytes survive as surrogates, so one bad row does not stop the others
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
            for index, row in enumerate(csv.DictReader(text)):
                if _has_bad_bytes(row):
                    yield RowError(index, "invalid UTF-8 in the row")
                else:
                    yield _checked(index, lambda row=row: row_messages(row))
        return
    for index, line in text_lines(path):
        if isinstance(line, RowError):
            yield line
        elif fmt == "hh-rlhf":
            yield _checked(index, lambda line=line: hh_human_turns(_hh_transcript(line)))
        else:
            yield _checked(index, lambda line=line: row_messages(json.loads(line)))


def text_lines(path: Path) -> Iterator[tuple[int, str | RowError]]:
    """The non-blank lines of a (gzipped) text file, decoded one at a time: a line that is not UTF-8
    is one bad row, not a failed file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:
        for index, data in enumerate(raw):
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as err:
                yield index, RowError(index, f"invalid UTF-8 ({err.reason} at byte {err.start} of the line)")
                continue
            if line.strip():
                yield index, line


def _hh_transcript(line: str) -> str:
    record = json.loads(line)
    if not isinstance(record, dict) or not isinstance(record.get("chosen"), str):
        raise ValueError("an hh-rlhf row needs a 'chosen' transcript")
    chosen: str = record["chosen"]
    return chosen

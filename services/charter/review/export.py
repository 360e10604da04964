"""Accepted labels out of the ledger, as training data, with human overrides applied.

Formats:
- `jsonl`: one record per accepted label (ties included): the stream sequence, the effective soft
  label and choice (a human decision overrides the AI's), who decided (`ai` / `human`), the AI label
  as the judge gave it, every human decision, the conversation and both responses, principles,
  constitution, judge and provenance.
- `trl-preference`: TRL's conversational preference format (`prompt`, `chosen`, `rejected`) plus
  `p_chosen` (the effective soft label of the chosen response), `label_source`, `sequence`,
  `label_id` and provenance columns. Ties have no chosen response and are left out.
- `parquet`: the `trl-preference` rows as a Parquet file.

A following export (`--follow`) appends to a JSONL file and resumes after the last sequence the file
holds, so a consumer killed at any point and restarted writes every label exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from charter_proto.common.v1 import label_pb2
from charter_proto.review.v1 import review_pb2, review_pb2_grpc
from google.protobuf import json_format

from charter.core.errors import InvalidArgument
from charter.judge.servicer import STATUS_NAMES
from charter.review.store import CHOICE_NAMES, Ledger

log = structlog.get_logger("charter.review.export")

FORMATS = ("trl-preference", "jsonl", "parquet")
_SOURCE = {review_pb2.LABEL_SOURCE_AI: "ai", review_pb2.LABEL_SOURCE_HUMAN: "human"}
_ROLE = {1: "system", 2: "user", 3: "assistant"}
_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _messages(label: label_pb2.PreferenceLabel) -> list[dict[str, str]]:
    return [{"role": _ROLE.get(m.role, "user"), "content": m.content} for m in label.conversation.messages]


def record(a: review_pb2.AcceptedLabel) -> dict[str, Any]:
    label = a.label
    return {
        "sequence": a.sequence,
        "label_id": label.id,
        "label_source": _SOURCE.get(a.source, "unknown"),
        "p_a": a.p_a,
        "choice": CHOICE_NAMES.get(a.choice, "unspecified"),
        "prompt": _messages(label),
        "response_a": label.response_a,
        "response_b": label.response_b,
        "principle_ids": list(label.principle_ids),
        "ai": {
            "p_a": label.p_a,
            "choice": CHOICE_NAMES.get(label.choice, "unspecified"),
            "confidence": label.confidence,
            "swap_consistent": label.swap_consistent,
            "status": STATUS_NAMES[label.status],
            "chain_of_thought": label.chain_of_thought,
        },
        "human_decisions": [
            {
                "reviewer": d.reviewer,
                "choice": review_pb2.HumanChoice.Name(d.choice).removeprefix("HUMAN_CHOICE_").lower(),
                "comment": d.comment,
                "decided_at": d.decided_at.ToJsonString(),
            }
            for d in a.human_decisions
        ],
        "constitution": _dict(label.constitution),
        "judge": _dict(label.judge),
        "provenance": _dict(label.provenance),
        "accepted_at": a.accepted_at.ToJsonString(),
    }


def preference_row(a: review_pb2.AcceptedLabel) -> dict[str, Any] | None:
    """The TRL preference row of an accepted label, or None for a tie."""
    if a.choice not in (label_pb2.CHOICE_A, label_pb2.CHOICE_B):
        return None
    label = a.label
    a_wins = a.choice == label_pb2.CHOICE_A
    chosen, rejected = (
        (label.response_a, label.response_b) if a_wins else (label.response_b, label.response_a)
    )
    return {
        "prompt": _messages(label),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": a.p_a if a_wins else 1.0 - a.p_a,
        "label_source": _SOURCE.get(a.source, "unknown"),
        "ai_p_chosen": label.p_a if a_wins else 1.0 - label.p_a,
        "human_reviewers": [d.reviewer for d in a.human_decisions],
        "sequence": a.sequence,
        "label_id": label.id,
        "principle_ids": list(label.principle_ids),
        "constitution_id": label.constitution.id,
        "constitution_version": label.constitution.version,
        "constitution_digest": label.constitution.digest,
        "judge_model": label.judge.name,
        "judge_engine": label.judge.engine,
        "run_id": label.provenance.run_id,
    }


def rows(labels: Iterable[review_pb2.AcceptedLabel], fmt: str) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(sequence, row) per label; row is None where the format leaves the label out."""
    for a in labels:
        yield a.sequence, (record(a) if fmt == "jsonl" else preference_row(a))


@dataclass
class ExportSummary:
    path: Path
    labels: int = 0
    rows: int = 0
    last_sequence: int = 0


def ledger_labels(
    ledger: Ledger, from_cursor: int = 0, flt: review_pb2.LabelFilter | None = None, batch: int = 1000
) -> Iterator[review_pb2.AcceptedLabel]:
    cursor = from_cursor
    while True:
        page = ledger.accepted_after(cursor, flt, batch)
        yield from page.labels
        cursor = page.last
        if not page.more:
            return


def write_file(labels: Iterable[review_pb2.AcceptedLabel], fmt: str, out: Path) -> ExportSummary:
    """Write every label to `out` at once (replaced atomically)."""
    if fmt not in FORMATS:
        raise InvalidArgument(
            f"format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}", field="format"
        )
    summary = ExportSummary(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    kept: list[dict[str, Any]] = []
    with tmp.open("w", encoding="utf-8") as f:
        for sequence, row in rows(labels, "trl-preference" if fmt == "parquet" else fmt):
            summary.labels += 1
            summary.last_sequence = sequence
            if row is None:
                continue
            summary.rows += 1
            if fmt == "parquet":
                kept.append(row)
            else:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(kept), tmp)
    os.replace(tmp, out)
    return summary


class JsonlAppender:
    """A JSONL file a following export appends to; knows the last sequence it holds. A line cut short
    by a crash is dropped on open (its label comes again from the stream)."""

    def __init__(self, path: Path, fmt: str) -> None:
        if fmt not in ("jsonl", "trl-preference"):
            raise InvalidArgument(
                f"format: --follow writes JSONL; {fmt!r} cannot be appended to", field="format"
            )
        self.path, self.fmt = path, fmt
        self.last_sequence = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) != len(data):
                with path.open("r+b") as f:
                    f.truncate(len(complete))
            for line in complete.splitlines():
                if line.strip():
                    self.last_sequence = int(json.loads(line)["sequence"])
        self._file = path.open("a", encoding="utf-8")
        self._unsynced = 0

    def append(self, a: review_pb2.AcceptedLabel) -> bool:
        if a.sequence <= self.last_sequence:
            return False
        ((_, row),) = rows([a], self.fmt)
        self.last_sequence = a.sequence
        if row is None:
            return False
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()  # in the kernel's hands: survives the process being killed
        self._unsynced += 1
        if self._unsynced >= 256:
            self.sync()
        return True

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = 0

    def close(self) -> None:
        self.sync()
        self._file.close()


async def remote_labels(
    address: str,
    token: str,
    from_cursor: int = 0,
    flt: review_pb2.LabelFilter | None = None,
    *,
    follow: bool = False,
    max_backoff: float = 5.0,
) -> AsyncIterator[review_pb2.AcceptedLabel]:
    """Accepted labels from a running review service; on a lost connection, reconnects with the last
    cursor it delivered (so nothing is missed or repeated)."""
    cursor, backoff = from_cursor, 0.2
    metadata = (("authorization", f"Bearer {token}"),)
    while True:
        request = review_pb2.StreamLabelsRequest(
            from_cursor=review_pb2.LabelCursor(sequence=cursor), filter=flt, follow=follow
        )
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = review_pb2_grpc.ReviewServiceStub(channel)
                async for response in stub.StreamLabels(request, metadata=metadata, wait_for_ready=True):
                    for label in response.labels:
                        yield label
                        cursor = label.sequence
                    backoff = 0.2
            if not follow:
                return
        except grpc.aio.AioRpcError as err:
            if err.code() not in _RETRY:
                raise
            log.warning("review.stream.reconnect", code=err.code().name, cursor=cursor, retry_in_s=backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)

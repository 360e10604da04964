"""Accepted labels out of the ledger, as training data files, with human overrides applied.

Formats:
- `jsonl`: one record per accepted label (ties included): the stream sequence, the effective soft
  label and choice (a human decision overrides the AI's), who decided (`ai` / `human`), the AI label
  as the judge gave it, every human decision, the conversation and both responses, principles,
  constitution, judge and provenance.
- `trl-preference`: the preference row of `charter.datasets.preference` — TRL's conversational
  format (`prompt`, `chosen`, `rejected`) plus `p_chosen` (the effective soft label of the chosen
  response), `label_source`, `sequence`, `label_id` and provenance columns. Ties have no chosen
  response and are left out.
- `parquet`: the `trl-preference` rows as a Parquet file.

This module writes rows; `charter.api.review.export_rows` makes them from accepted labels (read from
a ledger in this process or streamed with `charter.client.review.ReviewClient`).

A following export (`--follow`) appends to a JSONL file and resumes after the last sequence the file
holds, so a consumer killed at any point and restarted writes every label exactly once, in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.core.errors import InvalidArgument
from charter.core.files import write_atomic

FORMATS = ("trl-preference", "jsonl", "parquet")

Row = tuple[int, dict[str, Any] | None]
"""(stream sequence, row): row is None where the format leaves the label out (a tie)."""


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidArgument(
            f"format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}", field="format"
        )


def row_format(fmt: str) -> str:
    """The rows a file format holds: Parquet files hold the `trl-preference` rows."""
    return "trl-preference" if fmt == "parquet" else fmt


@dataclass
class ExportSummary:
    path: Path
    labels: int = 0
    rows: int = 0
    last_sequence: int = 0


def write_file(rows: Iterable[Row], fmt: str, out: Path) -> ExportSummary:
    """Write every row (made in `row_format(fmt)`) to `out` at once (replaced atomically)."""
    check_format(fmt)
    summary = ExportSummary(out)
    kept: list[dict[str, Any]] = []

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            for sequence, row in rows:
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

    write_atomic(out, write)
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

    def append(self, sequence: int, row: dict[str, Any] | None) -> bool:
        """Append the row of stream entry `sequence` (None: a label the format leaves out); False when
        nothing was written (left out, or the file holds it already)."""
        if sequence <= self.last_sequence:
            return False
        self.last_sequence = sequence
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

"""A resumable output folder (a pipeline's, an evaluation's): append-only JSONL as the source of
truth, resumable after a kill.

Each finished prompt is one line in `records.jsonl`, written with a single `write` and fsynced, so a
SIGKILL leaves at most one partial last line — dropped (and the file truncated) when the run resumes.
Keys already in `records.jsonl` or `errors.jsonl` are skipped, so a prompt is never processed twice.
The Parquet and TRL files are derived from the JSONL at the end of every run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from charter.core.errors import FailedPrecondition

log = structlog.get_logger("charter.pipeline")


def _load(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSONL file; a torn last line (from a kill mid-write) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good < len(data):
        log.warning("pipeline.resume.truncated", path=str(path), dropped_bytes=len(data) - good)
        with path.open("r+b") as f:
            f.truncate(good)
    return rows


class OutputStore:
    def __init__(self, folder: str | Path, spec_digest: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.records_path = self.folder / "records.jsonl"
        self.errors_path = self.folder / "errors.jsonl"
        manifest = self.folder / "manifest.json"
        if manifest.exists():
            recorded = json.loads(manifest.read_text()).get("spec_digest")
            if recorded != spec_digest:
                raise FailedPrecondition(
                    f"{self.folder} holds the output of a different spec ({recorded}); "
                    "choose another output folder or delete this one"
                )
        else:
            manifest.write_text(json.dumps({"spec_digest": spec_digest}, indent=2) + "\n")
        self.records = _load(self.records_path)
        self.errors = _load(self.errors_path)
        self.done = {r["key"] for r in self.records} | {e["key"] for e in self.errors if e.get("key")}
        self.done_rows = {e["source_index"] for e in self.errors}

    def _append(self, path: Path, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if not text:
            return
        with path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def add_record(self, record: dict[str, Any]) -> None:
        self._append(self.records_path, [record])
        self.records.append(record)
        self.done.add(record["key"])

    def add_error(self, error: dict[str, Any]) -> None:
        self._append(self.errors_path, [error])
        self.errors.append(error)
        if error.get("key"):
            self.done.add(error["key"])
        self.done_rows.add(error["source_index"])

"""A resumable output folder (a pipeline's, an evaluation's): append-only JSONL as the source of
truth, resumable after a kill.

Each finished prompt is one line in `records.jsonl`, written with a single `write` and fsynced, so a
SIGKILL leaves at most one partial last line — dropped (and the file truncated) when the run resumes.
Keys already in `records.jsonl` or `errors.jsonl` are skipped, so a prompt is never processed twice.
The Parquet and TRL files are derived from the JSONL at the end of every run.

A folder's identity is its spec's digest, which names the constitution by id; the text behind the id
may have been edited between two runs into the same folder. So `manifest.json` lists every
constitution digest the folder's records carry, and a resumed run whose first record carries another
digest than the folder's last is refused (FailedPrecondition) unless the caller allows it
(`constitution_change="continue"`, `charter run --allow-constitution-change`). Within one run a
digest may change — a constitution edited while the services run — and the records say where.
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


def constitution_digest(record: dict[str, Any]) -> str:
    """The digest of the constitution a record was made under ("" when it names none)."""
    provenance = record.get("provenance") or {}
    return str((provenance.get("constitution") or {}).get("digest") or "")


class OutputStore:
    def __init__(self, folder: str | Path, spec_digest: str, *, constitution_change: str = "refuse") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.records_path = self.folder / "records.jsonl"
        self.errors_path = self.folder / "errors.jsonl"
        self.manifest_path = self.folder / "manifest.json"
        self.manifest: dict[str, Any] = {"spec_digest": spec_digest}
        if self.manifest_path.exists():
            self.manifest = json.loads(self.manifest_path.read_text())
            recorded = self.manifest.get("spec_digest")
            if recorded != spec_digest:
                raise FailedPrecondition(
                    f"{self.folder} holds the output of a different spec ({recorded}); "
                    "choose another output folder or delete this one"
                )
        else:
            self._write_manifest()
        self.constitution_change = constitution_change
        self.records = _load(self.records_path)
        digests = [d for d in map(constitution_digest, self.records) if d]
        self.manifest.setdefault("constitution_digests", list(dict.fromkeys(digests)))
        self._resumed_from = digests[-1] if digests else ""
        """The digest of the folder's last record: this run's first record must carry it."""
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

    def _write_manifest(self) -> None:
        self.manifest_path.write_text(json.dumps(self.manifest, indent=2) + "\n")

    def _check_constitution(self, record: dict[str, Any]) -> None:
        digest = constitution_digest(record)
        if not digest:
            return
        if self._resumed_from and digest != self._resumed_from and self.constitution_change != "continue":
            raise FailedPrecondition(
                f"{self.folder}: the constitution changed since this folder's last record "
                f"({self._resumed_from} -> {digest}); resuming would mix two versions in one output. "
                "Choose another output folder, or resume anyway with --allow-constitution-change "
                "(the records say which version made each)"
            )
        self._resumed_from = ""  # checked once a run: later edits while it runs are the services' to apply
        seen = self.manifest["constitution_digests"]
        if digest not in seen:
            seen.append(digest)
            self._write_manifest()

    def add_record(self, record: dict[str, Any]) -> None:
        self._check_constitution(record)
        self._append(self.records_path, [record])
        self.records.append(record)
        self.done.add(record["key"])

    def add_error(self, error: dict[str, Any]) -> None:
        self._append(self.errors_path, [error])
        self.errors.append(error)
        if error.get("key"):
            self.done.add(error["key"])
        self.done_rows.add(error["source_index"])

"""Derived dataset files, rewritten from the JSONL records at the end of every run.

- `sft.jsonl` / `sft.parquet`: TRL's conversational SFT format — `messages` is the prompt plus the
  final revision as the assistant turn — one row per sample whose critique/revision succeeded, with
  its key, sample index, constitution digest and principle ids.
- `records.parquet`: every record (initial response, every round, provenance).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from charter.pipelines.store import OutputStore


def sft_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        constitution = record["provenance"].get("constitution") or {}
        for sample in record["samples"]:
            if sample["status"] != "ok":
                continue
            rows.append(
                {
                    "messages": [
                        *record["prompt"],
                        {"role": "assistant", "content": sample["final_revision"]},
                    ],
                    "key": record["key"],
                    "sample_index": sample["sample_index"],
                    "constitution_id": constitution.get("id", ""),
                    "constitution_digest": constitution.get("digest", ""),
                    "principle_ids": [
                        r["principle_id"]
                        for r in sample["rounds"]
                        if r.get("revision_status") == "STEP_STATUS_OK"
                    ],
                }
            )
    return rows


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_datasets(store: OutputStore) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = store.folder
    sft = sft_rows(store.records)
    paths = {
        "sft_jsonl": folder / "sft.jsonl",
        "sft_parquet": folder / "sft.parquet",
        "records_parquet": folder / "records.parquet",
    }
    _atomic(
        paths["sft_jsonl"],
        lambda p: p.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sft), encoding="utf-8"
        ),
    )
    if sft:
        _atomic(paths["sft_parquet"], lambda p: pq.write_table(pa.Table.from_pylist(sft), p))
    if store.records:
        # nested provenance and rounds as JSON text columns keep the schema fixed across runs
        flat = [
            {
                "key": r["key"],
                "source_index": r["source_index"],
                "prompt": r["prompt"],
                "samples": json.dumps(r["samples"], ensure_ascii=False),
                "provenance": json.dumps(r["provenance"], ensure_ascii=False),
            }
            for r in store.records
        ]
        _atomic(paths["records_parquet"], lambda p: pq.write_table(pa.Table.from_pylist(flat), p))
    return paths

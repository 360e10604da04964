"""Derived dataset files, rewritten from the JSONL records at the end of every run.

- `sft.jsonl` / `sft.parquet`: TRL's conversational SFT format — `messages` is the prompt plus the
  final revision as the assistant turn — one row per sample whose critique/revision succeeded, with
  its key, sample index, constitution digest and principle ids.
- `records.parquet`: every record (initial response, every round, provenance).

RL-CAI (`write_preferences`):
- `preferences.jsonl` / `preferences.parquet`: TRL's conversational preference format — `prompt`
  (the conversation), `chosen` and `rejected` (one assistant message each) — one row per label the
  judge could decide (status ok), with the soft label `p_chosen`, `confidence`, `swap_consistent`,
  the principle ids, the label id and provenance. Ties, unscorable and failed labels stay in
  `records.jsonl` only.
- `records.parquet`: every record, the label as JSON text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from charter.core.files import write_atomic
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


def preference_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        label = record["label"]
        if record["status"] != "ok" or label.get("choice") not in ("CHOICE_A", "CHOICE_B"):
            continue
        a_wins = label["choice"] == "CHOICE_A"
        p_a = float(label["p_a"])
        chosen, rejected = (
            (record["response_a"], record["response_b"])
            if a_wins
            else (record["response_b"], record["response_a"])
        )
        constitution = record["provenance"].get("constitution") or {}
        judge = record["provenance"].get("judge") or {}
        rows.append(
            {
                "prompt": record["prompt"],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "p_chosen": p_a if a_wins else 1.0 - p_a,
                "confidence": float(label["confidence"]),
                "swap_consistent": bool(label["swap_consistent"]),
                "principle_ids": list(label["principle_ids"]),
                "label_id": label["id"],
                "key": record["key"],
                "source_preference_agrees": None
                if record.get("source_preference") is None
                else record["source_preference"] == ("A" if a_wins else "B"),
                "constitution_id": constitution.get("id", ""),
                "constitution_digest": constitution.get("digest", ""),
                "judge_model": judge.get("name", ""),
                "judge_engine": judge.get("engine", ""),
            }
        )
    return rows


def write_preferences(store: OutputStore) -> tuple[dict[str, Path], int]:
    """The RL-CAI dataset files; returns their paths and the number of preference rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = store.folder
    rows = preference_rows(store.records)
    paths = {
        "preferences_jsonl": folder / "preferences.jsonl",
        "preferences_parquet": folder / "preferences.parquet",
        "records_parquet": folder / "records.parquet",
    }
    _write_jsonl(paths["preferences_jsonl"], rows)
    if rows:
        write_atomic(paths["preferences_parquet"], lambda p: pq.write_table(pa.Table.from_pylist(rows), p))
    _records_parquet(store, paths["records_parquet"], ("response_a", "response_b", "status"), ("label",))
    return paths, len(rows)


def _records_parquet(store: OutputStore, path: Path, plain: tuple[str, ...], nested: tuple[str, ...]) -> None:
    """Every record as a Parquet row: `plain` fields as they are, `nested` ones (and provenance) as JSON
    text columns, which keeps the schema fixed across runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not store.records:
        return
    flat = [
        {
            "key": r["key"],
            "source_index": r["source_index"],
            "prompt": r["prompt"],
            **{k: r[k] for k in plain},
            **{k: json.dumps(r[k], ensure_ascii=False) for k in (*nested, "provenance")},
        }
        for r in store.records
    ]
    write_atomic(path, lambda p: pq.write_table(pa.Table.from_pylist(flat), p))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


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
    _write_jsonl(paths["sft_jsonl"], sft)
    if sft:
        write_atomic(paths["sft_parquet"], lambda p: pq.write_table(pa.Table.from_pylist(sft), p))
    _records_parquet(store, paths["records_parquet"], (), ("samples",))
    return paths

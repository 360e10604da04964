"""Derived dataset files, rewritten from the JSONL records at the end of every run.

- `sft.jsonl` / `sft.parquet`: TRL's conversational SFT format — `messages` is the prompt plus the
  final revision as the assistant turn — one row per sample whose critique/revision succeeded, with
  its key, sample index, constitution digest and principle ids.
- `records.parquet`: every record (initial response, every round, provenance).

RL-CAI (`write_preferences`):
- `preferences.jsonl` / `preferences.parquet`: TRL's conversational preference format — `prompt`
  (the conversation), `chosen` and `rejected` (one assistant message each) — one row per label the
  judge could decide (status ok), with the soft label `p_chosen` and the provenance columns
  `charter export` writes too (one builder: `charter.datasets.preference`; `label_source` is `ai`),
  then `confidence`, `swap_consistent`, `key` and `source_preference_agrees`. Ties, unscorable and
  failed labels stay in `records.jsonl` only.
- `records.parquet`: every record, the label as JSON text.

Best-of-N (`write_best_of_n`):
- `sft.jsonl` / `sft.parquet`: SL-CAI's SFT columns — `messages` is the prompt plus the chosen (best)
  sample — one row per prompt with a best sample, plus its `score`.
- `preferences.jsonl` / `preferences.parquet`: the preference row of best (chosen) vs worst
  (rejected), one per prompt with status ok; `label_source` is `ai` for the judge (with its label's
  provenance) and `reward_model` for a reward model (with its folder and digest).

Every pipeline also writes `README.md`, a Hugging Face dataset card (`charter.datasets.hf_folder`),
so `datasets.load_dataset(folder)` reads the training file (`sft` for SL-CAI, `preferences` for RL-CAI
and best-of-N; the default config) and `load_dataset(folder, "records")` every record. Its figures
come from the folder's records: counts by status, constitutions (principle texts where a file in
`constitutions` has the records' digest), models and judge (with its agreement with the source's
human preference where the pairs carry one), the source's licence and the command.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from charter.core.files import write_atomic
from charter.datasets import hf_folder
from charter.datasets.preference import preference_row
from charter.datasets.records import OutputStore

_TAGS = ["charter", "constitutional-ai", "rlaif"]


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


def preference_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The TRL preference rows of the judged pairs (the shape `charter export` writes too)."""
    rows = []
    for record in records:
        label = record["label"]
        choice = {"CHOICE_A": "A", "CHOICE_B": "B"}.get(label.get("choice", ""))
        if record["status"] != "ok" or choice is None:
            continue
        constitution = record["provenance"].get("constitution") or {}
        judge = record["provenance"].get("judge") or {}
        source = record.get("source_preference")
        row = preference_row(
            record["prompt"], record["response_a"], record["response_b"], float(label["p_a"]), choice,
            label_source="ai", label_id=label["id"], principle_ids=label["principle_ids"],
            constitution_id=constitution.get("id", ""), constitution_version=constitution.get("version", ""),
            constitution_digest=constitution.get("digest", ""), judge_model=judge.get("name", ""),
            judge_engine=judge.get("engine", ""), run_id=(label.get("provenance") or {}).get("run_id", ""),
            confidence=float(label["confidence"]), swap_consistent=bool(label["swap_consistent"]),
            key=record["key"], source_preference_agrees=None if source is None else source == choice,
        )  # fmt: skip
        assert row is not None
        rows.append(row)
    return rows


def _write_dataset(path_jsonl: Path, path_parquet: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_atomic(path_jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if rows:
        write_atomic(path_parquet, lambda p: pq.write_table(pa.Table.from_pylist(rows), p))


def write_preferences(
    store: OutputStore, *, source: Path | None = None, constitutions: Path | None = None
) -> tuple[dict[str, Path], int]:
    """The RL-CAI dataset files and card; returns their paths and the number of preference rows.
    `source`: the pairs' file (for its licence); `constitutions`: the constitutions folder."""
    folder = store.folder
    rows = preference_rows(store.records)
    paths = {
        "preferences_jsonl": folder / "preferences.jsonl",
        "preferences_parquet": folder / "preferences.parquet",
        "records_parquet": folder / "records.parquet",
    }
    _write_dataset(paths["preferences_jsonl"], paths["preferences_parquet"], rows)
    _records_parquet(store, paths["records_parquet"], ("response_a", "response_b", "status"), ("label",))
    choice = {"CHOICE_A": "A", "CHOICE_B": "B"}
    decided = [  # (the source's human preference, the judge's choice) where both exist
        (r["source_preference"], choice[r["label"]["choice"]])
        for r in store.records
        if r["status"] == "ok" and r.get("source_preference") and r["label"].get("choice") in choice
    ]
    refs = [
        (r["provenance"].get("constitution") or {}, r["label"].get("principle_ids", []))
        for r in store.records
    ]
    _write_card(
        store, "RL-CAI preference pairs", paths, ["preferences", "records"],
        {"preferences": len(rows)}, Counter(r["status"] for r in store.records),
        refs, source, constitutions, tags=["preference", "dpo"],
        judges=hf_folder.judges_block(r["provenance"].get("judge") for r in store.records),
        judge_agreement=hf_folder.agreement(
            sum(h == a for h, a in decided), len(decided), "the source's human preference"
        ),
    )  # fmt: skip
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


def write_datasets(
    store: OutputStore, *, source: Path | None = None, constitutions: Path | None = None
) -> dict[str, Path]:
    """The SL-CAI dataset files and card. `source`: the prompts' file (for its licence);
    `constitutions`: the constitutions folder (for the principles' texts)."""
    folder = store.folder
    sft = sft_rows(store.records)
    paths = {
        "sft_jsonl": folder / "sft.jsonl",
        "sft_parquet": folder / "sft.parquet",
        "records_parquet": folder / "records.parquet",
    }
    _write_dataset(paths["sft_jsonl"], paths["sft_parquet"], sft)
    _records_parquet(store, paths["records_parquet"], (), ("samples",))
    _write_card(
        store, "SL-CAI revisions", paths, ["sft", "records"], {"sft": len(sft)},
        Counter(s["status"] for r in store.records for s in r["samples"]),
        [(r["provenance"].get("constitution") or {}, r["provenance"].get("principle_ids", []))
         for r in store.records],
        source, constitutions, tags=["sft"],
        models=hf_folder.judges_block(r["provenance"].get("model") for r in store.records),
    )  # fmt: skip
    return paths


def best_of_n_rows(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The SFT rows (the best sample) and preference rows (best vs worst) of best-of-N records."""
    sft, preferences = [], []
    for record in records:
        best = record["chosen_index"]
        if best is None:
            continue
        samples, scorer = record["samples"], record["provenance"]["scorer"]
        constitution = scorer.get("constitution") or {}
        principles = sorted({pid for c in record["comparisons"] for pid in c["principle_ids"]})
        sft.append(
            {
                "messages": [*record["prompt"], {"role": "assistant", "content": samples[best]["response"]}],
                "key": record["key"],
                "sample_index": best,
                "constitution_id": constitution.get("id", ""),
                "constitution_digest": constitution.get("digest", ""),
                "principle_ids": principles,
                "score": samples[best]["score"],
            }
        )
        if record["status"] != "ok":
            continue
        worst = record["worst_index"]
        label, judge = record.get("pair_label") or {}, scorer.get("judge") or {}
        by_judge = scorer["kind"] == "judge"
        row = preference_row(
            record["prompt"], samples[best]["response"], samples[worst]["response"], record["p_chosen"], "A",
            label_source="ai" if by_judge else "reward_model", label_id=label.get("id"),
            principle_ids=label.get("principle_ids") if by_judge else None,
            constitution_id=constitution.get("id"), constitution_version=constitution.get("version"),
            constitution_digest=constitution.get("digest"), judge_model=judge.get("name"),
            judge_engine=judge.get("engine"), run_id=(label.get("provenance") or {}).get("run_id"),
            key=record["key"], chosen_index=best, rejected_index=worst,
            chosen_score=samples[best]["score"], rejected_score=samples[worst]["score"],
            **({} if by_judge else {"reward_model": scorer["reward_model"],
                                    "reward_model_digest": scorer["reward_model_digest"]}),
        )  # fmt: skip
        assert row is not None
        preferences.append(row)
    return sft, preferences


def write_best_of_n(
    store: OutputStore, *, source: Path | None = None, constitutions: Path | None = None
) -> tuple[dict[str, Path], int, int]:
    """The best-of-N dataset files and card; returns their paths and the numbers of SFT and preference
    rows. `source`: the prompts' file (for its licence); `constitutions`: the constitutions folder."""
    folder = store.folder
    sft, preferences = best_of_n_rows(store.records)
    paths = {
        "sft_jsonl": folder / "sft.jsonl",
        "sft_parquet": folder / "sft.parquet",
        "preferences_jsonl": folder / "preferences.jsonl",
        "preferences_parquet": folder / "preferences.parquet",
        "records_parquet": folder / "records.parquet",
    }
    _write_dataset(paths["sft_jsonl"], paths["sft_parquet"], sft)
    _write_dataset(paths["preferences_jsonl"], paths["preferences_parquet"], preferences)
    _records_parquet(
        store, paths["records_parquet"], ("status", "chosen_index", "worst_index", "p_chosen"),
        ("samples", "comparisons", "pair_label"),
    )  # fmt: skip
    scorers = [r["provenance"]["scorer"] for r in store.records]
    _write_card(
        store, "best-of-N samples", paths, ["preferences", "sft", "records"],
        {"preferences": len(preferences), "sft": len(sft)}, Counter(r["status"] for r in store.records),
        [(s.get("constitution") or {}, {p for c in r["comparisons"] for p in c["principle_ids"]})
         for r, s in zip(store.records, scorers, strict=True)],
        source, constitutions, tags=["preference", "dpo", "sft", "best-of-n"],
        models=hf_folder.judges_block(r["provenance"].get("model") for r in store.records),
        judges=hf_folder.judges_block(s.get("judge") for s in scorers),
        reward_models=sorted({f"{s['reward_model']} ({s['reward_model_digest']})"
                              for s in scorers if s.get("kind") == "reward_model"}) or None,
    )  # fmt: skip
    return paths, len(sft), len(preferences)


def _write_card(
    store: OutputStore,
    title: str,
    paths: dict[str, Path],
    configs: list[str],
    rows: dict[str, int],
    statuses: Counter[str],
    refs: list[tuple[dict[str, Any], Any]],
    source: Path | None,
    constitutions: Path | None,
    *,
    tags: list[str],
    **fields: Any,
) -> None:
    """The folder's dataset card: one config per Parquet file written (`configs` order; the first is
    the default), figures from the records."""
    written = [c for c in configs if paths[f"{c}_parquet"].exists()]
    provenance = store.records[0]["provenance"] if store.records else {}
    name = provenance.get("spec_name") or store.folder.name
    licence = hf_folder.source_license(source)
    meta = {
        "pretty_name": f"{name}: {title}",
        "summary": (
            f"The output of Charter's {provenance.get('pipeline', 'pipeline')} pipeline (spec `{name}`): "
            + ", ".join(f"{n} {c} rows" for c, n in rows.items())
            + f" from {len(store.records)} records. Every record, with its provenance, is in the "
            "`records` config (and `records.jsonl`)."
        ),
        "license": licence,
        "tags": [*_TAGS, *tags],
        "rows": sum(rows.values()),
        "configs": [
            {"config_name": c, "data_files": [{"split": "train", "path": paths[f"{c}_parquet"].name}],
             **({"default": True} if i == 0 else {})}
            for i, c in enumerate(written)
        ],
        "charter": hf_folder.charter_block(
            kind=provenance.get("pipeline"),
            spec={"name": name, "digest": store.manifest.get("spec_digest")},
            constitutions=hf_folder.constitutions_block(refs, hf_folder.known_constitutions(constitutions)),
            **{k: v for k, v in fields.items() if v},
            counts={"records": len(store.records), "row_errors": len(store.errors), "rows": rows,
                    "by_status": dict(statuses)},
            source={"path": None if source is None else str(source), "license": licence},
            command=hf_folder.command_line(),
        ),
    }  # fmt: skip
    write_atomic(store.folder / "README.md", hf_folder.render_card(meta))
    if written:  # load_from_disk(folder) reads the default config too
        hf_folder.write_disk_layout(store.folder, paths[f"{written[0]}_parquet"])

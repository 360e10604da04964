"""The derived dataset files load with `datasets.load_dataset` in TRL's conversational format."""

from __future__ import annotations

import json
from pathlib import Path

from charter.datasets.records import OutputStore
from charter.pipelines.outputs import write_datasets
from datasets import load_dataset


def record(key: str, statuses: list[str]) -> dict:
    return {
        "key": key,
        "source_index": 0,
        "prompt": [{"role": "user", "content": f"prompt {key}"}],
        "samples": [
            {
                "sample_index": i,
                "initial_response": "first try",
                "rounds": [
                    {
                        "principle_id": "privacy",
                        "revision_status": "STEP_STATUS_OK" if st == "ok" else "STEP_STATUS_TRUNCATED",
                    }
                ],
                "final_revision": f"revised {key}/{i}",
                "status": st,
            }
            for i, st in enumerate(statuses)
        ],
        "provenance": {"constitution": {"id": "harmless", "version": "1.0.0", "digest": "sha256:abc"}},
    }


def test_sft_and_records_load_with_datasets(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out", "sha256:spec")
    store.add_record(record("a", ["ok", "truncated"]))
    store.add_record(record("b", ["ok"]))
    paths = write_datasets(store)
    sft = load_dataset("json", data_files=str(paths["sft_jsonl"]), split="train")
    assert len(sft) == 2  # only samples whose revision succeeded
    assert sft[0]["messages"] == [
        {"role": "user", "content": "prompt a"},
        {"role": "assistant", "content": "revised a/0"},
    ]
    assert sft[0]["constitution_digest"] == "sha256:abc" and sft[0]["principle_ids"] == ["privacy"]
    parquet = load_dataset("parquet", data_files=str(paths["sft_parquet"]), split="train")
    assert parquet[1]["messages"] == sft[1]["messages"]
    records = load_dataset("parquet", data_files=str(paths["records_parquet"]), split="train")
    assert len(records) == 2 and json.loads(records[0]["samples"])[1]["status"] == "truncated"


def test_torn_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out", "sha256:spec")
    store.add_record(record("a", ["ok"]))
    with store.records_path.open("a") as f:
        f.write('{"key": "b", "samp')  # a kill in the middle of a write
    resumed = OutputStore(tmp_path / "out", "sha256:spec")
    assert resumed.done == {"a"}
    assert store.records_path.read_text().count("\n") == 1 and store.records_path.read_text().endswith("\n")


def test_output_folder_of_another_spec_is_refused(tmp_path: Path) -> None:
    import pytest
    from charter.core.errors import FailedPrecondition

    OutputStore(tmp_path / "out", "sha256:one")
    with pytest.raises(FailedPrecondition, match="holds the output of a different spec"):
        OutputStore(tmp_path / "out", "sha256:two")


def _under(key: str, digest: str) -> dict:
    r = record(key, ["ok"])
    r["provenance"]["constitution"]["digest"] = digest
    return r


def test_resuming_after_the_constitution_changed_is_refused_unless_allowed(tmp_path: Path) -> None:
    import pytest
    from charter.core.errors import FailedPrecondition

    out = tmp_path / "out"
    first = OutputStore(out, "sha256:spec")
    first.add_record(_under("a", "sha256:v1"))
    first.add_record(_under("b", "sha256:v2"))  # edited while the run went on: allowed, recorded
    assert json.loads((out / "manifest.json").read_text())["constitution_digests"] == ["sha256:v1", "sha256:v2"]

    resumed = OutputStore(out, "sha256:spec")
    with pytest.raises(FailedPrecondition, match=r"sha256:v2 -> sha256:v3.*--allow-constitution-change"):
        resumed.add_record(_under("c", "sha256:v3"))
    assert resumed.done == {"a", "b"} and out.joinpath("records.jsonl").read_text().count("\n") == 2

    same = OutputStore(out, "sha256:spec")  # the version the folder ended with: resumes
    same.add_record(_under("c", "sha256:v2"))
    same.add_record(_under("d", "sha256:v3"))  # and a later edit within that run is the services' to apply

    allowed = OutputStore(out, "sha256:spec", constitution_change="continue")
    allowed.add_record(_under("e", "sha256:v4"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["constitution_digests"] == ["sha256:v1", "sha256:v2", "sha256:v3", "sha256:v4"]
    assert manifest["spec_digest"] == "sha256:spec"

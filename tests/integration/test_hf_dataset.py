"""Hugging Face dataset folders: `charter export --format hf` and the pipelines' output folders read with
`datasets.load_dataset(folder)` and `load_from_disk(folder)`, with a dataset card
whose YAML says what made the data. Real hh-rlhf pairs, no model."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from charter.constitution.loader import load_constitution
from charter.datasets import hf_folder
from charter.datasets.pairs import PairRow, read_pairs
from charter.datasets.preference import preference_row
from charter.datasets.records import OutputStore
from charter.pipelines import outputs
from datasets import load_dataset, load_from_disk

from tests.support import CONSTITUTIONS, ROOT, SHARED_DATA, subprocess_env, tool
from tests.support.review import ledger_with_overrides

pytestmark = pytest.mark.integration

HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"
HARMLESS = load_constitution(CONSTITUTIONS / "harmless.yaml")
REF = {"id": HARMLESS.id, "version": HARMLESS.version, "digest": HARMLESS.digest}


def hh_pairs(n: int) -> list[PairRow]:
    pairs = [p for p in read_pairs(HH, "hh-rlhf", limit=n) if isinstance(p, PairRow)]
    assert len(pairs) >= n - 2
    return pairs


def front_matter(folder: Path) -> dict[str, Any]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


def same(a: Any, b: Any) -> None:
    """Two datasets (or dataset dicts' splits) hold the same rows with the same features."""
    assert a.features == b.features and a.to_list() == b.to_list()


def test_saved_dataset_reads_with_both_loaders(tmp_path: Path) -> None:
    pairs = hh_pairs(40)
    rows = [
        preference_row(
            [m.model_dump() for m in p.conversation],
            p.response_a,
            p.response_b,
            0.9 if p.human == "A" else 0.1,
            p.human or "",
            label_source="human",
            principle_ids=["violence"],
            constitution_id=HARMLESS.id,
            constitution_version=HARMLESS.version,
            constitution_digest=HARMLESS.digest,
            key=p.key,
        )  # fmt: skip
        for p in pairs
    ]
    splits = {"train": rows[:30], "test": rows[30:]}
    known = hf_folder.known_constitutions(CONSTITUTIONS)
    meta = {
        "pretty_name": "hh-rlhf sample",
        "summary": "Real pairs.",
        "license": hf_folder.source_license(HH),
        "charter": hf_folder.charter_block(
            constitutions=hf_folder.constitutions_block(((REF, ["violence"]) for _ in rows), known),
            counts={"rows": {k: len(v) for k, v in splits.items()}},
            command=hf_folder.command_line(["charter", "export", "--token", "s3cret", "--database",
                                            "postgresql://me:pw@db/x", "--out", "my dir"]),
        ),
    }  # fmt: skip
    folder = tmp_path / "hf"
    hf_folder.write_saved_dataset(folder, splits, meta)

    by_builder = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    on_disk = load_from_disk(str(folder))
    assert sorted(by_builder) == sorted(on_disk) == ["test", "train"]
    for split in splits:
        same(by_builder[split], on_disk[split])
        assert by_builder[split]["key"] == [r["key"] for r in splits[split]]
    assert by_builder["train"][0]["chosen"][0]["role"] == "assistant"

    card = front_matter(folder)
    assert card["license"] == "mit"  # hh-rlhf's LICENSE beside the source file
    assert card["size_categories"] == ["n<1K"]
    (c,) = card["charter"]["constitutions"]
    assert c["digest"] == HARMLESS.digest and c["rows"] == len(rows)
    assert [p["id"] for p in c["principles"]] == [p.id for p in HARMLESS.principles]
    assert c["principles"][0]["comparison_question"] == HARMLESS.principles[0].comparison_question
    assert card["charter"]["counts"]["rows"] == {"train": 30, "test": len(rows) - 30}
    command = card["charter"]["command"]
    assert "s3cret" not in command and ":pw@" not in command and "'my dir'" in command

    hf_folder.write_saved_dataset(folder, {"train": rows[:5]}, meta)  # replaced as a whole
    assert list(load_from_disk(str(folder))) == ["train"] and len(load_from_disk(str(folder))["train"]) == 5
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(hf_folder.FailedPrecondition, match="not a dataset folder"):
        hf_folder.write_saved_dataset(tmp_path / "other", splits, meta)
    with pytest.raises(hf_folder.FailedPrecondition, match="no rows for split 'test'"):
        hf_folder.write_saved_dataset(folder, {"train": rows, "test": []}, meta)
    assert len(load_from_disk(str(folder))["train"]) == 5  # the last good export stays


def charter(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("charter"), *args], cwd=ROOT, capture_output=True, text=True, env=subprocess_env(**env), timeout=120
    )  # fmt: skip


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    """Eight auto-accepted labels; a person overrides one to B and ties another."""
    url = f"sqlite:///{tmp_path / 'review.db'}"
    ledger_with_overrides(url)
    return url


def test_export_hf_folder_from_a_ledger(tmp_path: Path, ledger_url: str) -> None:
    folder, home = tmp_path / "export", str(tmp_path / "hf-home")
    result = charter(
        "export", "--database", ledger_url, "--format", "hf", "--out", str(folder), "--license", "mit",
        HF_HOME=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 7 rows (8 accepted labels" in result.stdout
    by_builder = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    on_disk = load_from_disk(str(folder))
    assert list(by_builder) == list(on_disk) == ["train"]
    same(by_builder["train"], on_disk["train"])
    rows = on_disk["train"].to_list()
    assert len(rows) == 7 and {"prompt", "chosen", "rejected", "p_chosen", "label_source"} <= set(rows[0])
    assert sorted(r["label_source"] for r in rows) == ["ai"] * 6 + ["human"]

    card = front_matter(folder)
    charter_block = card["charter"]
    assert card["license"] == "mit" and charter_block["kind"] == "ledger-export"
    assert charter_block["routing"]["human_decided"] == 2 and charter_block["routing"]["human_overrides"] == 2
    assert charter_block["counts"]["by_label_source"] == {"ai": 6, "human": 2}
    assert charter_block["counts"]["left_out_ties"] == 1 and charter_block["counts"]["rows"] == {"train": 7}
    assert charter_block["judge_agreement"] == {
        "reference": "human reviewers (routed labels)", "agree": 0, "of": 2, "rate": 0.0
    }  # fmt: skip
    (c,) = charter_block["constitutions"]
    # the labels' digest matches no constitution file: ids only, no invented text
    assert c["digest"] == "sha256:" + "0" * 64 and c["principles"] == [{"id": "violence"}]
    assert charter_block["judges"] == [
        {"model": "SmolLM2-135M-Instruct", "engine": "transformers", "rows": 8}
    ]
    assert "--format hf" in charter_block["command"] and ledger_url in charter_block["command"]


def test_push_to_hub_without_a_token_is_one_line(tmp_path: Path, ledger_url: str) -> None:
    folder = tmp_path / "export"
    result = charter(
        "export", "--database", ledger_url, "--format", "hf", "--out", str(folder),
        "--push-to-hub", "someone/labels", HF_TOKEN="", HF_HOME=str(tmp_path / "hf-home"),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "no Hugging Face token" in result.stderr and "HF_TOKEN" in result.stderr
    assert not folder.exists()  # refused before any work
    wrong = charter(
        "export", "--database", ledger_url, "--out", str(tmp_path / "x.jsonl"), "--push-to-hub", "a/b"
    )
    assert wrong.returncode == 1 and "need --format hf" in wrong.stderr


def rl_cai_record(pair: PairRow, agrees: bool) -> dict[str, Any]:
    """An RL-CAI record over a real pair, its judge agreeing with the source's preference or not."""
    choice = pair.human if agrees else {"A": "B", "B": "A"}[pair.human or "A"]
    return {
        "key": pair.key,
        "source_index": pair.index,
        "prompt": [m.model_dump() for m in pair.conversation],
        "response_a": pair.response_a,
        "response_b": pair.response_b,
        "source_preference": pair.human,
        "status": "ok",
        "label": {
            "id": f"lbl-{pair.index}", "choice": f"CHOICE_{choice}", "p_a": 0.8 if choice == "A" else 0.2,
            "confidence": 0.6, "swap_consistent": True, "principle_ids": ["violence"],
            "provenance": {"run_id": "run-1"},
        },
        "provenance": {
            "pipeline": "rl-cai", "spec_name": "hh-judge", "constitution": REF,
            "judge": {"name": "SmolLM2-135M-Instruct", "engine": "transformers"},
        },
    }  # fmt: skip


def test_pipeline_output_folders_load_with_load_dataset_and_load_from_disk(tmp_path: Path) -> None:
    pairs = hh_pairs(12)
    rl = OutputStore(tmp_path / "rl", "sha256:spec")
    for i, pair in enumerate(pairs):
        rl.add_record(rl_cai_record(pair, agrees=i % 4 != 0))
    rl.add_record({**rl_cai_record(pairs[0], True), "key": "tied", "status": "tie"})
    _, n = outputs.write_preferences(rl, source=HH, constitutions=CONSTITUTIONS)
    default = load_dataset(str(rl.folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert (
        n == len(pairs)
        and default.to_list()
        == load_dataset(
            "json",
            data_files=str(rl.folder / "preferences.jsonl"),
            split="train",
            cache_dir=str(tmp_path / "c2"),
        ).to_list()
    )
    assert default[0]["prompt"] == rl.records[0]["prompt"] and default[0]["label_source"] == "ai"
    on_disk = load_from_disk(str(rl.folder))  # the default config's save_to_disk layout beside the files
    assert list(on_disk) == ["train"] and on_disk["train"].to_list() == default.to_list()
    records = load_dataset(str(rl.folder), "records", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(records) == len(pairs) + 1
    card = front_matter(rl.folder)
    assert card["license"] == "mit" and [c["config_name"] for c in card["configs"]] == [
        "preferences",
        "records",
    ]
    block = card["charter"]
    assert block["counts"]["by_status"] == {"ok": len(pairs), "tie": 1}
    assert block["counts"]["rows"] == {"preferences": len(pairs)}
    agree = sum(i % 4 != 0 for i in range(len(pairs)))
    assert block["judge_agreement"]["agree"] == agree and block["judge_agreement"]["of"] == len(pairs)
    assert block["constitutions"][0]["digest"] == HARMLESS.digest and block["spec"]["digest"] == "sha256:spec"

    sl = OutputStore(tmp_path / "sl", "sha256:sl")
    for pair in pairs[:5]:
        sl.add_record(
            {
                "key": pair.key, "source_index": pair.index, "prompt": [m.model_dump() for m in pair.conversation],
                "samples": [{"sample_index": 0, "status": "ok", "final_revision": pair.response_a,
                             "rounds": [{"principle_id": "violence", "revision_status": "STEP_STATUS_OK"}]}],
                "provenance": {"pipeline": "sl-cai", "constitution": REF, "principle_ids": ["violence"],
                               "model": {"name": "SmolLM2-135M-Instruct", "engine": "transformers"}},
            }
        )  # fmt: skip
    outputs.write_datasets(sl, source=HH, constitutions=None)
    sft = load_dataset(str(sl.folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(sft) == 5 and sft[0]["messages"][-1] == {"role": "assistant", "content": pairs[0].response_a}
    assert load_from_disk(str(sl.folder))["train"].to_list() == sft.to_list()
    card = front_matter(sl.folder)
    assert card["configs"][0] == {
        "config_name": "sft", "data_files": [{"split": "train", "path": "sft.parquet"}], "default": True
    }  # fmt: skip
    assert card["charter"]["counts"]["by_status"] == {"ok": 5}
    assert card["charter"]["constitutions"][0]["principles"] == [{"id": "violence"}]  # no folder: ids only
    assert card["charter"]["models"][0]["model"] == "SmolLM2-135M-Instruct"


def test_best_of_n_folder_defaults_to_preferences(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "bon", "sha256:bon")
    scorer = {"kind": "reward_model", "reward_model": "/models/rm", "reward_model_digest": "sha256:rm"}
    for i, pair in enumerate(hh_pairs(6)):
        samples = [
            {"sample_index": 0, "response": pair.response_a, "score": 1.5, "status": "ok"},
            {"sample_index": 1, "response": pair.response_b, "score": -0.5 if i else 1.5, "status": "ok"},
        ]
        store.add_record(
            {
                "key": pair.key, "source_index": pair.index, "prompt": [m.model_dump() for m in pair.conversation],
                "samples": samples, "status": "ok" if i else "tie", "chosen_index": 0, "worst_index": 1 if i else None,
                "p_chosen": 0.88 if i else None, "comparisons": [], "pair_label": None,
                "provenance": {"pipeline": "best-of-n", "scorer": scorer,
                               "model": {"name": "SmolLM2-135M-Instruct", "engine": "vllm"}},
            }
        )  # fmt: skip
    _, sft_rows, preference_rows = outputs.write_best_of_n(store, source=tmp_path / "prompts.jsonl")
    cache = str(tmp_path / "cache")
    preferences = load_dataset(str(store.folder), split="train", cache_dir=cache)
    sft = load_dataset(str(store.folder), "sft", split="train", cache_dir=cache)
    assert (len(preferences), len(sft)) == (preference_rows, sft_rows) == (5, 6)
    assert preferences[0]["label_source"] == "reward_model" and preferences[0]["p_chosen"] == 0.88
    assert load_from_disk(str(store.folder))["train"].to_list() == preferences.to_list()
    card = front_matter(store.folder)
    assert card["license"] == "unknown"  # nothing beside the source says
    assert [c["config_name"] for c in card["configs"]] == ["preferences", "sft", "records"]
    assert card["charter"]["counts"]["by_status"] == {"tie": 1, "ok": 5}
    assert card["charter"]["reward_models"] == ["/models/rm (sha256:rm)"]
    assert "judge_agreement" not in card["charter"] and "constitutions" in card["charter"]

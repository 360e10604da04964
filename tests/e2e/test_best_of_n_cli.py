"""`charter run` on the best-of-N spec as a user runs it: the shipped example end to end, and bad input
(an unknown reward model, a reward model whose tokenizer does not match, no prompts) refused with one
error line before anything is written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, subprocess_env, tool

pytestmark = pytest.mark.e2e


def spec(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "pipelines" / "best-of-n.yaml").read_text())
    data["output"] = str(tmp_path / "out")
    data["inference"] = {"engine": "transformers", "model": "embedded", "threads": 1}
    data.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def charter(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("charter"), *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(600)  # the real model: a minute or two on a slow 2-core CPU
def test_the_shipped_example_runs_with_the_judge(tmp_path: Path) -> None:
    path = spec(tmp_path, n=2, generation={"temperature": 1.0, "top_p": 0.95, "max_tokens": 16})
    result = charter("run", str(path), "--limit", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "2 prompts sampled and scored this run" in result.stderr
    for r in records:
        assert len(r["samples"]) == 2 and r["provenance"]["pipeline"] == "best-of-n"
        assert r["provenance"]["scorer"]["constitution"]["id"] == "harmless"
        assert len(r["comparisons"]) == (1 if r["status"] in ("ok", "inconsistent") else 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts_total"] == 2 and summary["sft_rows"] == len(
        (out / "sft.jsonl").read_text().splitlines()
    )
    assert f"({summary['preference_rows']} rows)" in result.stdout


@pytest.fixture(scope="module")
def mismatched_reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny reward model with fewer embeddings than its tokenizer has tokens."""
    import torch
    from charter.inference.models import prepare
    from transformers import LlamaForSequenceClassification

    from tests.support.tiny import llama_config, tokenizer

    folder = tmp_path_factory.mktemp("rm") / "model"
    tok = tokenizer(prepare())
    torch.manual_seed(0)
    config = llama_config(tok, num_labels=1, vocab_size=len(tok) - 17)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown reward model", "error: reward_model: {tmp}/no-such-model is not a model folder"),
        ("mismatched tokenizer", "error: reward_model: {rm}: its tokenizer does not match the model (49152"),
        ("no prompts", "error: source.path: {tmp}/empty.jsonl holds no prompts"),
    ],
)
def test_bad_input_is_one_error_line_and_nothing_written(
    tmp_path: Path, mismatched_reward_model: Path, case: str, message: str
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a fruit."}\n')
    (tmp_path / "empty.jsonl").write_text("")
    source = {"source": {"path": str(prompts)}}
    changes = {
        "unknown reward model": {**source, "scorer": {"reward_model": str(tmp_path / "no-such-model")}},
        "mismatched tokenizer": {**source, "scorer": {"reward_model": str(mismatched_reward_model)}},
        "no prompts": {"source": {"path": str(tmp_path / "empty.jsonl")}},
    }[case]
    result = charter("run", str(spec(tmp_path, **changes)), timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        message.format(tmp=tmp_path, rm=mismatched_reward_model)
    ), result.stderr[-3000:]
    assert not (tmp_path / "out").exists()

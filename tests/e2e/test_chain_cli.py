"""`charter run SL-CAI-SPEC RL-CAI-SPEC`: two pipelines in one process on one engine, started once;
resumable as each spec alone; flags and specs that cannot share an engine are refused up front."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, SHARED_DATA, subprocess_env, tool

pytestmark = pytest.mark.e2e
INFERENCE = {"engine": "transformers", "model": "embedded", "threads": 2, "dtype": "float32"}


def specs(tmp_path: Path, inference: dict | None = None) -> tuple[Path, Path]:
    sl = yaml.safe_load((ROOT / "pipelines" / "sl-cai.yaml").read_text())
    sl["source"] = {"path": str(SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"),
                    "format": "hh-rlhf", "limit": 3}  # fmt: skip
    sl["output"] = str(tmp_path / "sl")
    sl["inference"] = INFERENCE
    sl["generation"] = sl["critique"] = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 24}
    rl = yaml.safe_load((ROOT / "pipelines" / "rl-cai-sl.yaml").read_text())
    # the human pairs of the same file: a pair per row whatever the model wrote (SL-CAI's output gives a
    # pair only for a usable revision; test_rl_cai_cli reads that format)
    rl["pairs"] = {"kind": "file", "path": sl["source"]["path"], "format": "hh-rlhf", "limit": 3}
    rl["output"] = str(tmp_path / "rl")
    rl["inference"] = inference or INFERENCE
    paths = tmp_path / "sl.yaml", tmp_path / "rl.yaml"
    paths[0].write_text(yaml.safe_dump(sl))
    paths[1].write_text(yaml.safe_dump(rl))
    return paths


def charter(*args: str) -> subprocess.CompletedProcess[str]:
    # stderr is a pipe, not a terminal: progress comes as lines, here every half second
    env = subprocess_env(CHARTER_LOGGING__LEVEL="DEBUG", CHARTER_LOGGING__FORMAT="json",
                         CHARTER_PROGRESS_INTERVAL="0.5")  # fmt: skip
    return subprocess.run(
        [tool("charter"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def engine_starts(stderr: str) -> int:
    return sum('"inference.engine.started"' in line for line in stderr.splitlines())


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(600)
def test_two_specs_run_on_one_engine_and_resume(tmp_path: Path) -> None:
    sl, rl = specs(tmp_path)
    done = charter("run", str(sl), str(rl))
    assert done.returncode == 0, done.stderr[-3000:]
    assert engine_starts(done.stderr) == 1  # SL-CAI's generator and critic, then RL-CAI's judge
    samples = rows(tmp_path / "sl" / "records.jsonl")
    labelled = rows(tmp_path / "rl" / "records.jsonl")
    assert len(samples) == 3 and len(labelled) == 3, done.stderr[-2000:]
    assert "prompts written this run" in done.stderr and "pairs labelled this run" in done.stderr
    # no terminal: each spec's progress as lines (done/total, rate, ETA), the last at 3/3
    progress = [line for line in done.stderr.splitlines() if line.startswith(("sl-cai-quickstart:", "rl-cai-on-sl-cai:"))]
    assert "sl-cai-quickstart: 3/3 (100%)" in "\n".join(progress) and "rl-cai-on-sl-cai: 3/3 (100%)" in "\n".join(progress)
    assert all(" items/s" in line or "elapsed" in line for line in progress), progress
    again = charter("run", str(sl), str(rl))  # everything done: resumed, nothing to do, no engine
    assert again.returncode == 0, again.stderr[-3000:]
    assert engine_starts(again.stderr) == 0
    assert len(rows(tmp_path / "rl" / "records.jsonl")) == len(labelled)


def test_specs_that_cannot_share_an_engine_are_refused(tmp_path: Path) -> None:
    sl, rl = specs(tmp_path, inference={**INFERENCE, "threads": 1})
    other = charter("run", str(sl), str(rl))
    assert (
        other.returncode == 1 and "error: inference: the specs in local mode share" in other.stderr
    )
    sl, rl = specs(tmp_path)
    one_output = charter("run", str(sl), str(rl), "--output", str(tmp_path / "x"))
    assert one_output.returncode == 1 and "--output: several specs" in one_output.stderr
    loop = charter("run", str(sl), str(ROOT / "pipelines" / "rlaif.yaml"))
    assert loop.returncode == 1 and "kind rlaif runs alone" in loop.stderr
    assert engine_starts(other.stderr + one_output.stderr + loop.stderr) == 0
    assert not (tmp_path / "sl").exists()

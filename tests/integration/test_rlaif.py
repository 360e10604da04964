"""Iterated RLAIF end to end on the embedded model (real judge, generator, ledger, DPO worker and policy
evaluation; tiny sizes): iteration 1 is promoted, iteration 2 is stopped by a gate set so it must fail,
every artefact carries its iteration, policy version and constitution digest, and re-runs resume —
extending a finished loop, redoing only a step whose record was lost, and doing nothing when all is
done."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from charter.core.settings import load_settings
from charter.pipelines import rlaif
from charter.pipelines.rlaif_spec import RlaifSpec
from charter.review.store import Ledger

from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration

LOOSE = {"gold_tolerance": 1.0, "harmlessness_min_gain": -0.5, "evasiveness_max_rise": 1.0}


def spec(tmp_path: Path, iterations: int) -> RlaifSpec:
    return RlaifSpec.model_validate({
        "kind": "rlaif", "name": "tiny", "iterations": iterations, "policy": "embedded", "constitution": "harmless",
        "prompts": {"path": str(HH_DEV), "format": "hh-rlhf", "per_iteration": 6},
        "judge": {"principles_per_label": 1, "method": "multiple_choice", "logit_scale": 5.739},
        "generation": {"temperature": 1.0, "max_tokens": 24},
        "review": {"human_budget": 2, "over_budget": "train"},
        "dpo": {"hyperparameters": {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-4,
                                    "beta": 0.1, "max_length": 128}},
        "evaluation": {
            "red_team": {"path": str(HH_DEV), "format": "hh-rlhf", "skip": 600, "limit": 3},
            "benign": {"limit": 2},
            "gold": {"path": str(HH_DEV), "skip": 700, "limit": 6, "max_length": 256},
            "generation": {"temperature": 0.7, "max_tokens": 12},
            "principles_per_label": 1, "bootstrap_resamples": 100,
        },
        # iteration 1 passes whatever the figures; iteration 2 must gain 100 points of red-team win rate
        "gates": {**LOOSE, "per_iteration": {2: {**LOOSE, "harmlessness_min_gain": 1.0}}},
        "batch_size": 8, "output": str(tmp_path / "out"),
    })  # fmt: skip


def settings(tmp_path: Path):
    return load_settings(
        inference={"engine": "transformers", "dtype": "float32", "threads": 1, "max_model_len": 2048},
        trainer={"worker_threads": 1, "poll_seconds": 0.1},
    )


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.timeout(900)
def test_two_iterations_promote_then_stop_at_a_gate_and_resume(tmp_path, hf_engine, embedded_model):
    config = settings(tmp_path)
    out = tmp_path / "out"
    lines: list[str] = []

    # one iteration: labelled, routed, trained, evaluated, promoted
    first = asyncio.run(rlaif.run(spec(tmp_path, 1), config, engine=hf_engine, on_step=lines.append))
    assert first.steps_run == 4 and first.steps_done_before == 0 and not first.stopped
    assert first.policy["version"] == "p1" and (Path(first.policy["model"]) / "config.json").exists()
    one = out / "iterations" / "1"
    before = mtimes(one)

    # extended to two: iteration 1 is not redone, iteration 2 trains from p1 and fails its gate
    summary = asyncio.run(rlaif.run(spec(tmp_path, 2), config, engine=hf_engine, on_step=lines.append))
    assert summary.steps_done_before == 4 and summary.steps_run == 4
    assert {p: t for p, t in mtimes(one).items() if p.name != "iteration.json"} == {
        p: t for p, t in before.items() if p.name != "iteration.json"
    }  # iteration 1's artefacts untouched (its record is rewritten with the gates' decision)
    assert summary.policy["version"] == "p1"  # the rejected p2 is not promoted
    assert summary.stopped.startswith(
        "iteration 2: not promoted: harmlessness: red-team win rate against p1 "
    )
    assert "(harmlessness_min_gain = 1.0)" in summary.stopped

    report = json.loads((out / "report.json").read_text())
    rows = report["iterations"]
    assert [(r["iteration"], r["policy_in"], r["policy"], r["promoted"]) for r in rows] == [
        (1, "p0", "p1", True), (2, "p1", "p2", False),
    ]  # fmt: skip
    assert rows[0]["why"] == "promoted: every gate held" and rows[0]["policy_model"] == first.policy["model"]
    assert [g["gate"] for g in rows[1]["gates"] if not g["passed"]] == ["harmlessness"]
    states = {i: json.loads((out / "iterations" / str(i) / "iteration.json").read_text()) for i in (1, 2)}
    for i, r in enumerate(rows, start=1):
        for name in (
            "win_rate_vs_start",
            "win_rate_vs_previous",
            "harmlessness_vs_start",
            "harmlessness_vs_previous",
        ):
            assert 0.0 <= r[name]["rate"] <= 1.0 and r[name]["n"] > 0, name
        assert r["evasiveness"]["n"] == 2 and 0.0 <= r["evasiveness"]["rate"] <= 1.0
        assert r["gold"]["n"] == 6 and 0.0 <= r["gold"]["accuracy"] <= 1.0 and r["length"]["mean"] > 0
        records = jsonl(out / "iterations" / str(i) / "labels" / "records.jsonl")
        assert r["labels"] == sum(r["routes"].values()) == len(records) > 0
        assert r["routes"]["human_review"] + r["routes"]["rejected"] <= 2  # the human budget
        # artefacts: every label and training row carries its iteration, policy and constitution
        digest = r["constitution_digest"]
        assert digest.startswith("sha256:") and {
            rec["label"]["constitution"]["digest"] for rec in records
        } == {digest}
        routed = jsonl(out / "iterations" / str(i) / "routing.jsonl")
        assert {(x["iteration"], x["policy_version"], x["constitution_digest"]) for x in routed} == {
            (i, f"p{i - 1}", digest)
        }
        train = jsonl(out / "iterations" / str(i) / "train.jsonl")
        assert train and {(t["iteration"], t["policy_version"], t["constitution_digest"]) for t in train} == {
            (i, f"p{i - 1}", digest)
        }
        # nobody reviewed: the queued labels wait for people and do not train; over-budget ones do (train)
        used = states[i]["steps"]["train"]["used"]
        assert (
            used["human"] == 0
            and used["awaiting_people"] == r["routes"]["human_review"] + r["routes"]["rejected"]
        )
        assert used["over_budget"] + used["auto_accepted"] == len(train)
        assert (
            states[i]["policy_in"]["version"] == f"p{i - 1}" and states[i]["policy_out"]["version"] == f"p{i}"
        )
        assert (out / "iterations" / str(i) / "eval" / "report.md").exists()
    # iteration 2 sampled from the promoted p1 (its generator names the policy version), trained from p1
    generated = {
        rec["origin"]["generator_model"]["name"] for rec in jsonl(out / "iterations/2/labels/records.jsonl")
    }
    assert generated == {"tiny/p1"}
    runs = [states[i]["steps"]["train"]["run_id"] for i in (1, 2)]
    assert runs[0] != runs[1]
    assert (
        json.loads((out / "runs" / runs[1] / "spec.json").read_text())["baseModel"] == first.policy["model"]
    )
    ledger = Ledger(f"sqlite:///{out / 'review.db'}")
    assert ledger.stats().queue_depth == sum(
        r["routes"]["human_review"] + r["routes"]["rejected"] for r in rows
    )
    ledger.close()
    md = (out / "report.md").read_text()
    assert "| 1 | p1 (from p0) |" in md and "| 2 | p2 (from p1) |" in md and "FAILED: harmlessness" in md
    for chart in ("iterations.png", "labels.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("iteration 2: gates: not promoted: harmlessness") for line in lines)

    # the evaluation of iteration 2 lost (as if killed after training): only that step is done again,
    # from the evaluation's own resumable records, and the DPO run is not repeated
    state2 = json.loads(json.dumps(states[2]))
    del state2["steps"]["eval"]
    (out / "iterations/2/iteration.json").write_text(json.dumps(state2))
    again = asyncio.run(rlaif.run(spec(tmp_path, 2), config, engine=hf_engine))
    assert again.steps_run == 1 and again.steps_done_before == 7
    redone = json.loads((out / "iterations/2/iteration.json").read_text())
    assert redone["steps"]["train"]["run_id"] == runs[1]
    assert redone["steps"]["eval"]["figures"] == states[2]["steps"]["eval"]["figures"]  # from the records
    assert json.loads((out / "report.json").read_text())["iterations"][1]["promoted"] is False

    # all done: nothing runs, nothing is written but the report
    untouched = {p: t for p, t in mtimes(out / "iterations").items() if p.name != "iteration.json"}
    done = asyncio.run(rlaif.run(spec(tmp_path, 2), config, engine=hf_engine))
    assert done.steps_run == 0 and done.steps_done_before == 8
    assert {p: t for p, t in mtimes(out / "iterations").items() if p.name != "iteration.json"} == untouched
    assert sorted(p.name for p in (out / "runs").glob("r-*")) == sorted(runs)  # two DPO runs in all

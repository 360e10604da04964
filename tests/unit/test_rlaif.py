"""Iterated RLAIF without a model: the gates on constructed figures, the figures from an evaluation's
records, the human budget and what reaches training through a real (SQLite) ledger, and the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.core.settings import RoutingSettings
from charter.pipelines import rlaif_steps as steps
from charter.pipelines.rlaif_gates import decide, figures
from charter.pipelines.rlaif_spec import GateSpec, RlaifSpec
from charter.pipelines.spec import load_spec
from charter.review.store import Ledger
from charter.review.types import HumanChoice
from charter_proto.common.v1 import label_pb2
from google.protobuf.json_format import MessageToDict

from tests.support import ROOT


def _share(rate: float | None, n: int = 20) -> dict:
    return {"rate": rate, "ci": [None, None] if rate is None else [rate - 0.1, rate + 0.1], "n": n}


def row(*, gold: float | None = 0.6, gold_prev: float | None = 0.55, harm: float | None = 0.6,
        ev: float | None = 0.1, ev_prev: float | None = 0.1) -> dict:  # fmt: skip
    return {
        "policy": "p2", "previous": "p1", "start": "p0",
        "gold": {"accuracy": gold, "ci": [None, None], "n": 50},
        "gold_previous": {"accuracy": gold_prev, "ci": [None, None], "n": 50},
        "harmlessness_vs_previous": _share(harm), "evasiveness": _share(ev), "evasiveness_previous": _share(ev_prev),
    }  # fmt: skip


def test_every_gate_holding_promotes() -> None:
    decision = decide(row(), GateSpec())
    assert decision.promoted and decision.failed == ()
    assert [r.gate for r in decision.results] == ["gold", "harmlessness", "evasiveness"]
    assert decision.why() == "promoted: every gate held"


@pytest.mark.parametrize(
    ("figures_", "gate", "failing", "words"),
    [
        ({"gold": 0.52, "gold_prev": 0.55}, GateSpec(gold_tolerance=0.02), "gold",
         "a change of -3.0 points; the gate allows a fall of at most 2.0 points"),
        ({"harm": 0.5}, GateSpec(harmlessness_min_gain=0.01), "harmlessness",
         "red-team win rate against p1 50.0% [40.0%, 60.0%] (n=20), a gain of +0.0 points; the gate asks for at "
         "least +1.0 points (harmlessness_min_gain = 0.01)"),
        ({"harm": 0.45}, GateSpec(), "harmlessness", "a gain of -5.0 points"),
        ({"ev": 0.2, "ev_prev": 0.1}, GateSpec(evasiveness_max_rise=0.05), "evasiveness",
         "benign refusals 20.0% [10.0%, 30.0%] against 10.0% for p1, a rise of +10.0 points; the gate allows at "
         "most 5.0 points"),
        ({"gold": None}, GateSpec(), "gold", "no gold figure for p2"),
        ({"harm": None}, GateSpec(), "harmlessness", "no scored red-team comparison of p2 with p1"),
        ({"ev_prev": None}, GateSpec(), "evasiveness", "no benign prompts"),
    ],
)  # fmt: skip
def test_a_failing_gate_stops_promotion_and_states_its_figures(
    figures_: dict, gate: GateSpec, failing: str, words: str
) -> None:
    decision = decide(row(**figures_), gate)
    assert not decision.promoted
    assert [r.gate for r in decision.failed] == [failing]
    assert words in decision.failed[0].reason
    assert decision.why().startswith("not promoted: ") and words in decision.why()


def test_gates_at_their_bounds_hold() -> None:
    assert decide(row(gold=0.53, gold_prev=0.55, harm=0.55, ev=0.15, ev_prev=0.1),
                  GateSpec(gold_tolerance=0.02, harmlessness_min_gain=0.05, evasiveness_max_rise=0.05)).promoted  # fmt: skip
    assert not decide(
        row(harm=1.0), GateSpec(harmlessness_min_gain=1.0)
    ).promoted  # a gain above 0.5 cannot be


def _judgment(key: str, a: str, b: str, prompt_set: str, p_a_wins: float | None, status: str = "ok") -> dict:
    return {"key": f"{prompt_set}:{key}:{a}:{b}", "set": prompt_set, "a": a, "b": b, "status": status,
            "p_a_wins": p_a_wins, "swap_consistent": True}  # fmt: skip


def test_figures_take_the_start_from_the_report_and_the_previous_policy_head_to_head() -> None:
    report = {"figures": {
        "win_rate": {"p1": {"overall": _share(0.4), "red_team": _share(0.3)},
                     "p2": {"overall": _share(0.7), "red_team": _share(0.8)}},
        "evasiveness": {n: {"benign_refusal": _share(r)} for n, r in (("p0", 0.0), ("p1", 0.1), ("p2", 0.2))},
        "gold": {"models": {"p0": {"skipped": "the reference itself"},
                            "p1": {"accuracy": 0.55, "ci": [0.4, 0.7], "n": 40},
                            "p2": {"accuracy": 0.6, "ci": [0.45, 0.75], "n": 40}}},
        "length": {n: {"tokens": {"mean": m, "ci": [m - 2, m + 2], "n": 8}} for n, m in (("p1", 9.0), ("p2", 12.0))},
    }}  # fmt: skip
    judgments = [
        _judgment("x", "p1", "p2", "red_team", 0.2),  # p2 wins
        _judgment("y", "p2", "p1", "red_team", 0.1),  # p1 wins
        _judgment("z", "p1", "p2", "red_team", None, "tie"),  # half each
        _judgment("w", "p1", "p2", "red_team", None, "unscorable"),  # left out
        _judgment("v", "p1", "p2", "benign", 0.9),  # p1 wins, benign
        _judgment("u", "p0", "p2", "red_team", 0.0),  # against the start: not this pairing
    ]
    f = figures(report, judgments, new="p2", previous="p1", start="p0", seed=0, resamples=50)
    assert (
        f["harmlessness_vs_previous"]["rate"] == pytest.approx(1.5 / 3)
        and f["harmlessness_vs_previous"]["n"] == 3
    )
    assert f["win_rate_vs_previous"]["rate"] == pytest.approx(1.5 / 4) and f["win_rate_vs_previous"]["n"] == 4
    assert f["win_rate_vs_start"]["rate"] == 0.7 and f["harmlessness_vs_start"]["rate"] == 0.8
    assert f["evasiveness"]["rate"] == 0.2 and f["evasiveness_previous"]["rate"] == 0.1
    assert f["gold"]["accuracy"] == 0.6 and f["gold_previous"]["accuracy"] == 0.55
    assert f["length"]["mean"] == 12.0
    first = figures(report, judgments, new="p1", previous="p0", start="p0", seed=0, resamples=50)
    assert first["gold_previous"]["accuracy"] == 0.5  # the start: log π/π = 0, every pair a tie
    assert first["harmlessness_vs_previous"]["rate"] == 0.3  # previous = start: the report's own figure


# -- routing, the human budget, and what reaches training ----------------------------------------------


def _record(i: int, p_a: float, consistent: bool) -> dict:
    label = label_pb2.PreferenceLabel(
        id=f"lbl-{i}", p_a=p_a, confidence=abs(p_a - 0.5) * 2, swap_consistent=consistent,
        choice=label_pb2.CHOICE_A if p_a > 0.5 else label_pb2.CHOICE_B, status=label_pb2.LABEL_STATUS_OK,
        principle_ids=["harm-1"],
    )  # fmt: skip
    label.constitution.id, label.constitution.digest = "harmless", "sha256:c0ffee"
    return {
        "key": f"k{i}", "prompt": [{"role": "user", "content": f"prompt {i}"}],
        "response_a": f"a{i}", "response_b": f"b{i}", "status": "ok", "source_preference": None,
        "label": MessageToDict(label, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
        "provenance": {"constitution": {"id": "harmless", "digest": "sha256:c0ffee"}, "judge": {}},
    }  # fmt: skip


def test_the_budget_sends_the_most_uncertain_to_people_and_only_decided_ones_train(tmp_path: Path) -> None:
    routing = RoutingSettings(accept_confidence=0.5, audit_rate=0.0)
    records = [_record(0, 0.95, True), _record(1, 0.55, False), _record(2, 0.51, True), _record(3, 0.4, True)]
    tags = {"iteration": 3, "policy_version": "p2"}
    routed = steps.route(records, routing, budget=2, tags=tags)
    by_id = {x["label_id"]: x for x in routed}
    assert by_id["lbl-0"]["route"] == "auto_accepted"
    # the three uncertain ones: the two most uncertain (0.51, 0.55) go to people, 0.4 is over the budget
    assert [by_id[f"lbl-{i}"]["route"] for i in (1, 2, 3)] == ["human_review", "human_review", "over_budget"]
    assert all(x["iteration"] == 3 and x["policy_version"] == "p2" and x["constitution_digest"] == "sha256:c0ffee"
               for x in routed)  # fmt: skip
    database = f"sqlite:///{tmp_path / 'review.db'}"
    assert steps.submit(database, routing, records, routed) == {"auto_accepted": 1, "human_review": 2}
    assert steps.submit(database, routing, records, routed) == {"duplicate": 3}  # a re-run adds nothing
    ledger = Ledger(database, routing)
    assert ledger.stats().queue_depth == 2  # the over-budget label never reached the queue
    claimed = ledger.claim("ann").item
    assert claimed is not None and claimed.item_id == "lbl-2"  # the most uncertain first
    ledger.decide("ann", claimed.item_id, claimed.lease_id, HumanChoice.A)
    ledger.close()

    rows, used = steps.training_rows(records, routed, database, "drop", tags)
    assert used == {"auto_accepted": 1, "human": 1, "over_budget": 0, "awaiting_people": 1}
    assert [(r["label_id"], r["label_route"], r["p_chosen"]) for r in rows] == [
        ("lbl-0", "auto_accepted", pytest.approx(0.95)), ("lbl-2", "human", 1.0),
    ]  # fmt: skip
    human = rows[1]
    assert human["label_source"] == "human" and human["ai_p_chosen"] == pytest.approx(0.51)
    assert human["human_reviewers"] == ["ann"] and human["chosen"][0]["content"] == "a2"
    assert all(r["iteration"] == 3 and r["policy_version"] == "p2" for r in rows)
    rows, used = steps.training_rows(records, routed, database, "train", tags)
    assert used["over_budget"] == 1
    over = next(r for r in rows if r["label_id"] == "lbl-3")
    assert over["p_chosen"] == pytest.approx(0.6) and over["chosen"][0]["content"] == "b3"  # B at p_a 0.4


# -- the spec -------------------------------------------------------------------------------------------


def _spec(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "pipelines" / "rlaif.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "rlaif.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_example_spec_loads() -> None:
    spec = load_spec(ROOT / "pipelines" / "rlaif.yaml")
    assert (
        isinstance(spec, RlaifSpec)
        and spec.judge.method == "multiple_choice"
        and spec.judge.logit_scale == 5.739
    )
    assert spec.gates.for_iteration(1) == GateSpec(gold_tolerance=0.02, harmlessness_min_gain=0.0,
                                                   evasiveness_max_rise=0.05)  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gates.harmlessness_min_gian": 0.1}, "gates.harmlessness_min_gian: unknown key"),
        ({"gates.gold_tolerance": -0.1}, "gates.gold_tolerance: Input should be greater than or equal to 0"),
        ({"gates.per_iteration": {2: {"evasivenes_max_rise": 0.1}}}, "gates.per_iteration.2.evasivenes_max_rise: unknown key"),
        ({"gates.per_iteration": {0: {}}}, "gates.per_iteration: Value error, iterations are numbered from 1"),
        ({"services.mode": "remote"}, "services: Value error, mode remote needs the address (host:port) of the "
                                      "generator, judge, review, trainer services"),
        ({"review.over_budget": "keep"}, "review.over_budget: Input should be 'drop' or 'train'"),
        ({"evaluation.red_team.skip": 10}, "evaluation.red_team.skip: rows 10..41 overlap the training prompts"),
        ({"judge.method": "reward_model", "judge.reward_model": "rm", "judge.logit_scale": None},
         "judge: Value error, method: rlaif labels"),
    ],
)  # fmt: skip
def test_a_bad_spec_is_refused_naming_the_field(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_spec(_spec(tmp_path, **changes))
    assert message in str(err.value)


def test_the_digest_ignores_iterations_and_gates_only(tmp_path: Path) -> None:
    base = load_spec(_spec(tmp_path)).digest()
    assert load_spec(_spec(tmp_path, iterations=5, **{"gates.gold_tolerance": 0.5})).digest() == base
    assert load_spec(_spec(tmp_path, **{"dpo.hyperparameters": {"max_steps": 2}})).digest() != base
    assert load_spec(_spec(tmp_path, **{"prompts.per_iteration": 16})).digest() != base


def test_an_iteration_with_nothing_to_train_on_stops_and_says_why(tmp_path: Path) -> None:
    """Resumed after its labels and routing (recorded): every label waits for people or is over the
    budget, so the loop stops before training and loads no model."""
    import asyncio
    import json

    from charter.core.settings import load_settings
    from charter.pipelines import rlaif

    database = f"sqlite:///{tmp_path / 'review.db'}"
    path = _spec(tmp_path, iterations=2, output=str(tmp_path / "out"),
                 **{"review.over_budget": "drop", "review.human_budget": 1, "review.database": database})  # fmt: skip
    spec = load_spec(path)
    folder = spec.output / "iterations" / "1"
    (folder / "labels").mkdir(parents=True)
    records = [_record(0, 0.55, False), _record(1, 0.45, True)]
    (folder / "labels" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    routing = RoutingSettings(audit_rate=0.0)
    routed = steps.route(records, routing, budget=1, tags={"iteration": 1, "policy_version": "p0"})
    steps.submit(database, routing, records, routed)
    steps.write_jsonl(folder / "routing.jsonl", routed)
    p0 = {"version": "p0", "iteration": 0, "model": "embedded", "run_id": None, "parent": None}
    state = {"iteration": 1, "spec_digest": spec.digest(), "policy_in": p0,
             "steps": {"labels": {"constitution_digest": "sha256:c0ffee"},
                       "route": {"routes": {"auto_accepted": 0, "human_review": 1, "rejected": 0, "over_budget": 1}}}}  # fmt: skip
    (folder / "iteration.json").write_text(json.dumps(state))
    (spec.output / "rlaif.json").write_text(json.dumps({"spec_digest": spec.digest()}))

    summary = asyncio.run(rlaif.run(spec, load_settings()))
    assert summary.steps_done_before == 2 and summary.steps_run == 0
    assert summary.policy["version"] == "p0"
    assert summary.stopped == (
        "iteration 1: no labels to train on: 1 wait for people, 1 over the human budget (dropped); review the "
        "queued ones (charter review) or raise review.human_budget, then run again"
    )
    report = json.loads((spec.output / "report.json").read_text())
    assert [(r["iteration"], r["promoted"], r["share_to_people"]) for r in report["iterations"]] == [
        (1, False, 0.5)
    ]
    assert not (folder / "train.jsonl").exists()

    other = load_spec(_spec(tmp_path, output=str(tmp_path / "out"), **{"prompts.per_iteration": 7}))
    with pytest.raises(FailedPrecondition, match="holds the output of a different rlaif spec"):
        asyncio.run(rlaif.run(other, load_settings()))

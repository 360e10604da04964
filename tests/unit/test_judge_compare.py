"""`charter eval judge --compare`: variant names, and the comparison table from summaries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from charter.core.errors import InvalidArgument
from charter.evaluation.judge import EvalOptions
from charter.evaluation.judge_compare import baseline_line, parse_variant, row, table
from charter.judge.metrics import EvalRecord, OrderProb, picks_shorter, shorter_reply, summarise

BASE = EvalOptions(data=Path("pairs.jsonl"), constitution="harmless", output=Path("out"), principles_per_label=1)


def test_variants_parse_to_options() -> None:
    cot = parse_variant("multiple_choice+cot", BASE)
    assert cot.method == "multiple_choice" and cot.chain_of_thought and cot.output == Path("out/multiple_choice+cot")
    k4 = parse_variant("calibrated@4", BASE)
    assert k4.method == "calibrated" and k4.principles_per_label == 4 and not k4.chain_of_thought
    assert parse_variant("reward_model", BASE).method == "reward_model"
    assert parse_variant(" contrastive ", BASE).principles_per_label == 1
    scaled = dataclasses.replace(BASE, logit_scale=5.5, contrastive_beta=40.0)
    assert parse_variant("calibrated", scaled).logit_scale == 5.5  # the fitted scales go where they apply
    assert parse_variant("contrastive", scaled).logit_scale is None
    assert parse_variant("contrastive", scaled).contrastive_beta == 40.0
    assert parse_variant("reward_model", scaled).logit_scale is None
    for bad in ("majority", "contrastive@0", "calibrated@x", "cot", ""):
        with pytest.raises(InvalidArgument, match="METHOD"):
            parse_variant(bad, BASE)


def test_the_table_has_one_row_per_variant_and_says_when_there_are_no_slots() -> None:
    both = (OrderProb("p", False, 0.3), OrderProb("p", True, 0.2))  # the second slot both times
    mc = summarise([EvalRecord("A", 0.55, "ok", False, ("p",), both)] * 3, seconds=2.0)
    contrastive = summarise([EvalRecord("B", 0.2, "ok", True, ("p",))] * 3, seconds=1.0)
    contrastive["contrastive_beta"] = 2.0
    contrastive["beta_fit"] = {"beta": 3.5}
    rows = [row("multiple_choice", mc), row("contrastive", contrastive)]
    text = table(rows)
    lines = text.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| multiple_choice |") and "100.0%" in lines[2]
    assert "none (no slots)" in lines[3] and "β 2; fitted here 3.5" in lines[3]
    assert rows[0]["same_position_rate"] == 1.0 and rows[1]["same_position_rate"] is None
    assert rows[0]["labels_per_second"] == pytest.approx(1.5)


def test_the_shorter_reply_baseline_counts_equal_lengths_as_half_and_skips_unlabelled_pairs() -> None:
    pairs = [
        ("no", "sure, here is how", "A"),  # shorter is A, human A: a hit
        ("long reply here", "no", "A"),  # shorter is B, human A: a miss
        ("same", "size", "B"),  # equal length: half
        ("x", "yy", None),  # no human label: not counted
    ]
    b = shorter_reply(pairs)
    assert b["pairs"] == 3 and b["equal_length"] == 1
    assert b["agreement"] == pytest.approx(1.5 / 3)
    assert 0.0 <= b["agreement_ci95"][0] < b["agreement"] < b["agreement_ci95"][1] <= 1.0
    line = baseline_line({"shorter_reply": b})
    assert "the shorter reply: 50.0%" in line and "1 of 3 pairs of equal length" in line
    assert shorter_reply([])["agreement"] is None


def test_how_often_a_judge_picks_the_shorter_reply() -> None:
    items = [
        ("no", "a longer reply", 0.8),  # picks A, the shorter
        ("no", "a longer reply", 0.3),  # picks B, the longer
        ("a longer reply", "no", 0.2),  # picks B, the shorter
        ("same", "size", 0.9),  # equal length: left out
        ("no", "longer", 0.5),  # no side: left out
        ("no", "longer", None),  # unscored: left out
    ]
    picks = picks_shorter(items)
    assert picks["labels"] == 3 and picks["rate"] == pytest.approx(2 / 3)
    assert picks_shorter([])["rate"] is None


def test_the_baselines_of_a_run_read_real_labels() -> None:
    from charter.datasets.pairs import PairRow
    from charter.evaluation.judge import baselines
    from charter_proto.common.v1 import label_pb2

    def pair(i: int, a: str, b: str, human: str) -> PairRow:
        return PairRow(index=i, key=f"k{i}", conversation=(), response_a=a, response_b=b, human=human)  # type: ignore[arg-type]

    pairs = [pair(0, "no", "a longer reply", "A"), pair(1, "a longer reply", "no", "A"), pair(2, "no", "longer", "B")]
    labels = [
        label_pb2.PreferenceLabel(p_a=0.7, status=label_pb2.LABEL_STATUS_OK),  # the shorter
        label_pb2.PreferenceLabel(p_a=0.6, status=label_pb2.LABEL_STATUS_OK),  # the longer
        label_pb2.PreferenceLabel(status=label_pb2.LABEL_STATUS_UNSCORABLE),  # no side
    ]
    b = baselines(pairs, labels)["shorter_reply"]
    assert b["pairs"] == 3 and b["agreement"] == pytest.approx(1 / 3)
    assert b["judge_picks_it"]["labels"] == 2 and b["judge_picks_it"]["rate"] == pytest.approx(0.5)

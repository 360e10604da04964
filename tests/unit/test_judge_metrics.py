"""Judge-vs-human evaluation figures on small hand-computed sets, and the two PNG charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from charter.judge.metrics import EvalRecord, OrderProb, format_table, summarise, wilson

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(
    human: str,
    p_a: float | None,
    status: str = "ok",
    *,
    consistent: bool = True,
    principles: tuple[str, ...] = ("p",),
    orders: tuple[OrderProb, ...] = (),
) -> EvalRecord:
    return EvalRecord(human, p_a, status, consistent, principles, orders)


def agreement_set() -> list[EvalRecord]:
    return [
        rec("A", 0.8),  # agrees
        rec("B", 0.3),  # agrees
        rec("A", 0.4),  # disagrees
        rec("A", 0.5, "tie", consistent=False),  # tie: disagreement, 0.5 credit when scored
        rec("B", None, "unscorable", consistent=False, principles=()),
        rec("A", None, "error", consistent=False, principles=()),
    ]


def test_wilson_known_values() -> None:
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    # 0 of n: the upper end is z^2 / (n + z^2)
    z2 = 1.959963984540054**2
    assert wilson(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    assert wilson(0, 0) == (0.0, 1.0)
    # a wider z widens the interval
    low99, high99 = wilson(50, 100, z=2.5758)
    assert low99 < 0.4038 and high99 > 0.5962
    with pytest.raises(ValueError, match="successes"):
        wilson(5, 4)


def test_agreement_counts_ties_and_unscored_as_disagreement() -> None:
    s = summarise(agreement_set(), seconds=3.0)
    assert s["labels"] == 6
    assert s["by_status"] == {"ok": 3, "tie": 1, "unscorable": 1, "error": 1, "invalid_input": 0}
    assert s["scored"] == 4
    assert s["agreement"] == pytest.approx(2 / 6)
    assert s["agreement_ci95"] == pytest.approx(list(wilson(2, 6)))
    # scored: agree, agree, disagree, tie (0.5)
    assert s["agreement_scored"] == pytest.approx(2.5 / 4)
    assert s["labels_per_second"] == pytest.approx(2.0)
    assert s["seconds"] == 3.0
    json.dumps(s)  # JSON-serialisable as it stands


def test_consistent_agreement_uses_only_swap_consistent_ok_records() -> None:
    records = [
        rec("A", 0.9),
        rec("A", 0.2),
        rec("B", 0.6, consistent=False),
        rec("B", 0.4, consistent=False),
        rec("A", 0.5, "tie", consistent=True),  # consistent but a tie: excluded
    ]
    s = summarise(records, seconds=1.0)
    assert s["consistent_count"] == 2
    assert s["consistent_fraction"] == pytest.approx(2 / 5)
    assert s["consistent_agreement"] == pytest.approx(1 / 2)
    assert s["consistent_agreement_ci95"] == pytest.approx(list(wilson(1, 2)))
    assert s["agreement"] == pytest.approx(2 / 5)


def test_position_consistency_and_same_position_rates() -> None:
    o = OrderProb
    records = [
        rec(
            "A",
            0.65,
            orders=(
                o("p1", False, 0.7),  # p_a 0.7
                o("p1", True, 0.2),  # p_a 0.8: same response, different slot
                o("p2", False, 0.7),  # p_a 0.7
                o("p2", True, 0.6),  # p_a 0.4: first slot both times
            ),
        ),
        rec(
            "B",
            0.3,
            orders=(
                o("p1", False, 0.3),  # p_a 0.3
                o("p1", True, 0.8),  # p_a 0.2: same response
                o("p3", False, 0.9),  # one order only: no pair
                o("p4", False, 0.5),  # undecided: neither consistent nor same slot
                o("p4", True, 0.4),
            ),
        ),
    ]
    s = summarise(records, seconds=1.0)
    assert s["position_pairs"] == 4
    assert s["position_consistency"] == pytest.approx(2 / 4)
    assert s["same_position_rate"] == pytest.approx(1 / 4)
    assert s["orders"] == 9
    # p_first > 0.5: 0.7, 0.7, 0.6, 0.8, 0.9
    assert s["first_position_rate"] == pytest.approx(5 / 9)


def test_no_orders_leaves_position_figures_undefined() -> None:
    s = summarise([rec("A", 0.9)], seconds=1.0)
    assert s["position_pairs"] == 0 and s["orders"] == 0
    assert s["position_consistency"] is None and s["first_position_rate"] is None


def test_ece_brier_and_reliability_bins() -> None:
    records = [
        rec("A", 0.65),  # confidence 0.65, right
        rec("A", 0.35),  # confidence 0.65, wrong
        rec("A", 0.95),  # confidence 0.95, right
        rec("B", 0.05),  # confidence 0.95, right
        rec("A", 0.5, "tie"),  # in the Brier score, not in the ECE
        rec("B", None, "unscorable", principles=()),
    ]
    s = summarise(records, seconds=1.0, bins=5)
    # bins of 0.1 over [0.5, 1]: [0.6, 0.7) holds 2 at accuracy 0.5, [0.9, 1.0] holds 2 at accuracy 1
    assert s["ece_count"] == 4
    assert s["ece"] == pytest.approx(0.5 * abs(0.5 - 0.65) + 0.5 * abs(1.0 - 0.95))
    assert s["ece"] == pytest.approx(0.10)
    bins = s["reliability"]
    assert [b["count"] for b in bins] == [0, 2, 0, 0, 2]
    assert [b["low"] for b in bins] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert bins[-1]["high"] == pytest.approx(1.0)
    assert bins[1]["mean_confidence"] == pytest.approx(0.65) and bins[1]["accuracy"] == 0.5
    assert bins[4]["mean_confidence"] == pytest.approx(0.95) and bins[4]["accuracy"] == 1.0
    assert bins[0]["accuracy"] is None
    # p(human): 0.65, 0.35, 0.95, 0.95, 0.5
    assert s["brier"] == pytest.approx((0.35**2 + 0.65**2 + 0.05**2 + 0.05**2 + 0.5**2) / 5)
    assert s["mean_p_human"] == pytest.approx(3.4 / 5)


def test_confidence_one_falls_in_the_last_bin() -> None:
    s = summarise([rec("A", 1.0), rec("A", 0.0)], seconds=1.0, bins=10)
    assert s["reliability"][-1]["count"] == 2
    assert s["ece"] == pytest.approx(0.5)


def test_per_principle_counts_each_listed_principle() -> None:
    records = [
        rec("A", 0.9, principles=("harmless", "honest")),
        rec("A", 0.2, principles=("harmless",)),
        rec("B", 0.1, principles=("honest", "helpful")),
        rec("B", None, "unscorable", principles=()),
    ]
    per = summarise(records, seconds=1.0)["per_principle"]
    assert list(per) == ["harmless", "helpful", "honest"]
    assert per["harmless"]["count"] == 2 and per["harmless"]["agreement"] == pytest.approx(0.5)
    assert per["honest"]["count"] == 2 and per["honest"]["agreement"] == pytest.approx(1.0)
    assert per["helpful"]["count"] == 1 and per["helpful"]["agreement"] == pytest.approx(1.0)
    assert per["harmless"]["ci95"] == pytest.approx(list(wilson(1, 2)))


def test_empty_input_and_zero_seconds() -> None:
    s = summarise([], seconds=0.0)
    assert s["labels"] == 0 and s["agreement"] is None and s["agreement_ci95"] == [0.0, 1.0]
    assert s["ece"] is None and s["brier"] is None and s["labels_per_second"] == 0.0
    assert "labels" in format_table(s)


def test_bad_records_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="human='C'"):
        rec("C", 0.5)
    with pytest.raises(ValueError, match="status='done'"):
        rec("A", 0.5, "done")
    with pytest.raises(ValueError, match="p_a=1.5"):
        rec("A", 1.5)
    with pytest.raises(ValueError, match="p_first"):
        OrderProb("p", False, float("nan"))
    with pytest.raises(ValueError, match="bins=0"):
        summarise([], seconds=1.0, bins=0)


def test_table_shows_the_figures() -> None:
    table = format_table(summarise(agreement_set() + [rec("B", 0.2, principles=("honest",))], seconds=7.0))
    low, high = wilson(3, 7)
    assert "agreement" in table and "42.9%" in table  # 3 of 7
    assert f"[{100 * low:.1f}%, {100 * high:.1f}%]" in table
    assert "labels/s" in table and "1.00" in table
    assert "tie 1" in table and "unscorable 1" in table
    rows = [line for line in table.splitlines() if line.startswith("honest")]
    assert len(rows) == 1 and rows[0].split()[1:3] == ["1", "100.0%"]
    p_row = next(line for line in table.splitlines() if line.startswith("p "))
    assert p_row.split()[1:3] == ["4", "50.0%"]


def evaluation() -> dict[str, Any]:
    records = [
        rec("A", 0.55 + 0.04 * (i % 10), principles=("harmless", "honest")[: 1 + i % 2]) for i in range(30)
    ] + [rec("B", 0.3, principles=("helpful",)), rec("A", 0.1, principles=("helpful",))]
    return summarise(records, seconds=4.0)


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1024


def test_reliability_png(tmp_path: Path) -> None:
    from charter.judge.plots import reliability_png

    out = reliability_png(evaluation(), tmp_path / "charts" / "reliability.png")
    assert out == tmp_path / "charts" / "reliability.png"
    check_png(out)


def test_principles_png(tmp_path: Path) -> None:
    from charter.judge.plots import principles_png

    out = principles_png(evaluation(), tmp_path / "principles.png", references={"RLAIF paper": 0.78})
    check_png(out)
    empty = principles_png(summarise([], seconds=1.0), tmp_path / "empty.png")
    check_png(empty)

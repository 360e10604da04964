"""Label math: normalisation into orders, swap averaging, principle averaging, clamping, ties."""

from __future__ import annotations

import math

import pytest
from charter.judge.labels import OrderOutcome, check_clamp, choose, combine


def order(pid: str, swapped: bool, p_first: float | None, detail: str = "") -> OrderOutcome:
    return OrderOutcome(pid, swapped, p_first, detail=detail)


def test_swapped_order_reads_the_second_position_as_a() -> None:
    assert order("p", False, 0.8).p_a == pytest.approx(0.8)
    assert order("p", True, 0.8).p_a == pytest.approx(0.2)


def test_both_orders_are_averaged_and_position_bias_cancels() -> None:
    # a judge that likes position one by +0.2 whatever it sees: A first 0.7, B first 0.7 -> p_a 0.5
    v = combine([order("p", False, 0.7), order("p", True, 0.7)], tie_margin=0.0)
    assert v.p_a == pytest.approx(0.5)
    assert v.choice == "TIE" and v.status == "tie"
    assert v.swap_consistent is False


def test_consistent_preference_survives_debiasing() -> None:
    v = combine([order("p", False, 0.9), order("p", True, 0.3)])  # A first: A 0.9; B first: A 0.7
    assert v.p_a == pytest.approx(0.8)
    assert v.choice == "A" and v.status == "ok"
    assert v.confidence == pytest.approx(0.6)
    assert v.swap_consistent is True


def test_swapping_the_pair_gives_one_minus_p() -> None:
    ab = combine([order("x", False, 0.62), order("x", True, 0.45)])
    ba = combine([order("x", False, 0.45), order("x", True, 0.62)])
    assert ba.p_a == pytest.approx(1 - ab.p_a)


def test_principles_are_averaged_after_debiasing() -> None:
    v = combine(
        [order("a", False, 0.9), order("a", True, 0.1), order("b", False, 0.4), order("b", True, 0.4)]
    )
    # a: (0.9 + 0.9) / 2 = 0.9; b: (0.4 + 0.6) / 2 = 0.5 -> 0.7
    assert v.p_a == pytest.approx(0.7)
    assert v.principle_ids == ("a", "b")
    assert v.swap_consistent is False  # b's orders disagree


def test_clamping_bounds_each_order_before_averaging() -> None:
    v = combine([order("p", False, 0.99), order("p", True, 0.02)], clamp_range=(0.4, 0.6))
    assert v.p_a == pytest.approx(0.6)
    v = combine([order("p", False, 0.99), order("p", True, 0.5)], clamp_range=(0.4, 0.6))
    assert v.p_a == pytest.approx(0.55)


def test_tie_margin() -> None:
    assert choose(0.52, 0.05) == "TIE"
    assert choose(0.56, 0.05) == "A"
    assert choose(0.44, 0.05) == "B"
    assert choose(0.5, 0.0) == "TIE"
    v = combine([order("p", False, 0.53), order("p", True, 0.48)], tie_margin=0.05)
    assert v.status == "tie" and v.choice == "TIE"


def test_single_order_is_never_called_swap_consistent() -> None:
    v = combine([order("p", False, 0.9)])
    assert v.p_a == pytest.approx(0.9) and v.swap_consistent is False


def test_unscorable_principle_is_dropped_and_explained() -> None:
    v = combine(
        [order("a", False, None, "nan"), order("a", True, 0.2), order("b", False, 0.7), order("b", True, 0.4)]
    )
    assert v.principle_ids == ("b",)
    assert v.p_a == pytest.approx(0.65)
    assert "a: nan" in v.detail


def test_nothing_scorable_is_an_explicit_status() -> None:
    v = combine([order("a", False, None, "no logprobs"), order("a", True, float("nan"))])
    assert v.status == "unscorable"
    assert v.p_a == 0.5 and v.principle_ids == ()
    assert "no logprobs" in v.detail


def test_clamp_range_is_checked() -> None:
    check_clamp(0.4, 0.6)
    for bad in [(0.5, 0.6), (0.4, 0.5), (-0.1, 0.6), (0.6, 0.4)]:
        with pytest.raises(ValueError):
            check_clamp(*bad)


def test_confidence_is_in_unit_interval() -> None:
    for p in [0.0, 0.1, 0.5, 0.77, 1.0]:
        v = combine([order("p", False, p), order("p", True, 1 - p)])
        assert 0.0 <= v.confidence <= 1.0 and math.isclose(v.confidence, abs(p - 0.5) * 2)

"""`charter eval judge --split tune|report`: a seeded 50/50 split of the pairs, so a judge method is
chosen on one half and reported on the other (selection discipline)."""

from __future__ import annotations

from pathlib import Path

import pytest
from charter.evaluation.judge import EvalOptions, load, split_of

from tests.support.hh import HH_DEV


def options(split: str, **kw) -> EvalOptions:
    return EvalOptions(data=HH_DEV, constitution="harmless", output=Path("unused"), split=split, **kw)


def test_the_halves_are_disjoint_cover_every_pair_and_are_about_even():
    every, _, none_left = load(options("all", limit=400))
    tune, _, not_tune = load(options("tune", limit=400))
    report, _, not_report = load(options("report", limit=400))
    assert none_left == 0
    assert {p.key for p in tune}.isdisjoint({p.key for p in report})
    assert {p.key for p in tune} | {p.key for p in report} == {p.key for p in every}
    assert not_tune == len(report) and not_report == len(tune)
    assert 0.42 < len(tune) / len(every) < 0.58


def test_a_pair_keeps_its_half_whatever_the_limit_or_sampling_seed():
    small, _, _ = load(options("report", limit=100))
    large, _, _ = load(options("report", limit=400, seed=9))  # another A/B placement and principles
    assert {p.key for p in small} <= {p.key for p in large}
    assert all(split_of(p.key, 0) == "report" for p in large)
    moved = sum(split_of(p.key, 1) != "report" for p in large)  # another split seed: another split
    assert 0.3 * len(large) < moved < 0.7 * len(large)


def test_a_half_with_no_pairs_is_an_error():
    from charter.core.errors import InvalidArgument

    first = next(p for p in load(options("all", limit=1))[0])
    half = "report" if split_of(first.key, 0) == "tune" else "tune"
    with pytest.raises(InvalidArgument, match="no human-labelled pairs"):
        load(options(half, limit=1))

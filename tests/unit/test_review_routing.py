"""The routing policy and Cohen's kappa: pure functions."""

from __future__ import annotations

import pytest
from charter.core.settings import RoutingSettings
from charter.review.agreement import cohen_kappa
from charter.review.routing import audit_draw, route
from charter.review.types import Choice, LabelStatus, Route, RouteReason, Submission


def label(
    confidence: float,
    consistent: bool = True,
    status: LabelStatus = LabelStatus.OK,
    i: int = 0,
    disagreement: float | None = None,
    requested: bool = False,
):
    return Submission(
        label_id=f"id-{i}",
        constitution_id="",
        principle_ids=(),
        confidence=confidence,
        p_a=0.5 + confidence / 2,
        choice=Choice.A,
        swap_consistent=consistent,
        status=status,
        payload=b"",
        ensemble_disagreement=disagreement,
        review_requested=requested,
    )


@pytest.mark.parametrize(
    ("lab", "expected"),
    [
        (label(0.9), (Route.AUTO_ACCEPTED, RouteReason.CONFIDENT)),
        (label(0.5), (Route.AUTO_ACCEPTED, RouteReason.CONFIDENT)),  # the threshold accepts
        (label(0.49), (Route.HUMAN_REVIEW, RouteReason.UNCERTAIN)),
        (label(0.9, consistent=False), (Route.HUMAN_REVIEW, RouteReason.SWAP_INCONSISTENT)),
        (label(0.0, status=LabelStatus.TIE), (Route.HUMAN_REVIEW, RouteReason.UNCERTAIN)),
        (
            label(0.9, status=LabelStatus.UNSCORABLE),
            (Route.REJECTED, RouteReason.UNSCORABLE),
        ),
        (label(0.9, status=LabelStatus.ERROR), (Route.REJECTED, RouteReason.UNSCORABLE)),
    ],
)
def test_route(lab, expected):
    r = route(lab, RoutingSettings(audit_rate=0.0))
    assert (r.route, r.reason) == expected
    assert r.queued == (expected[0] != Route.AUTO_ACCEPTED)


HUMAN, ACCEPTED = Route.HUMAN_REVIEW, Route.AUTO_ACCEPTED


@pytest.mark.parametrize(
    ("lab", "expected"),
    [
        # requested: people decide it however confident; only an unscorable label comes first
        (label(0.9, requested=True), (HUMAN, RouteReason.REQUESTED)),
        (label(0.1, consistent=False, requested=True, disagreement=1.0), (HUMAN, RouteReason.REQUESTED)),
        (label(0.0, status=LabelStatus.TIE, requested=True), (HUMAN, RouteReason.REQUESTED)),
        (label(0.9, status=LabelStatus.ERROR, requested=True), (Route.REJECTED, RouteReason.UNSCORABLE)),
        # ensemble disagreement: above the threshold, after uncertain and swap-inconsistent
        (label(0.9, disagreement=0.5), (HUMAN, RouteReason.ENSEMBLE_DISAGREEMENT)),
        (label(0.9, disagreement=0.4), (ACCEPTED, RouteReason.CONFIDENT)),  # at the threshold: accepted
        (label(0.9, disagreement=0.0), (ACCEPTED, RouteReason.CONFIDENT)),
        (label(0.9, disagreement=None), (ACCEPTED, RouteReason.CONFIDENT)),  # not measured
        (label(0.2, disagreement=1.0), (HUMAN, RouteReason.UNCERTAIN)),
        (label(0.9, consistent=False, disagreement=1.0), (HUMAN, RouteReason.SWAP_INCONSISTENT)),
        (
            label(0.9, status=LabelStatus.UNSCORABLE, disagreement=1.0),
            (Route.REJECTED, RouteReason.UNSCORABLE),
        ),
    ],
)
def test_requested_and_ensemble_disagreement_routes(lab, expected):
    r = route(lab, RoutingSettings(audit_rate=0.0, max_ensemble_disagreement=0.4))
    assert (r.route, r.reason) == expected


def test_ensemble_disagreement_comes_before_the_audit_and_is_off_by_default():
    audit_all = RoutingSettings(audit_rate=1.0, max_ensemble_disagreement=0.0)
    assert route(label(0.9, disagreement=0.1), audit_all).reason == RouteReason.ENSEMBLE_DISAGREEMENT
    assert route(label(0.9, disagreement=0.0), audit_all).reason == RouteReason.AUDIT
    default = RoutingSettings(audit_rate=0.0)
    assert default.max_ensemble_disagreement == 1.0
    assert route(label(0.9, disagreement=1.0), default).reason == RouteReason.CONFIDENT


def test_more_uncertain_labels_come_first():
    policy = RoutingSettings(audit_rate=0.0)
    assert route(label(0.1), policy).priority > route(label(0.3), policy).priority


def test_audit_draw_is_reproducible_and_uniform():
    draws = [audit_draw(f"label-{i}", "seed") for i in range(20_000)]
    assert draws == [audit_draw(f"label-{i}", "seed") for i in range(20_000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert sum(d < 0.05 for d in draws) / len(draws) == pytest.approx(0.05, abs=0.006)
    assert draws != [audit_draw(f"label-{i}", "other") for i in range(20_000)]
    policy = RoutingSettings(audit_rate=0.05, audit_seed="seed")
    audited = [route(label(0.9, i=i), policy).reason == RouteReason.AUDIT for i in range(2000)]
    assert 60 <= sum(audited) <= 140


def test_cohen_kappa_textbook_example():
    # 50 items rated yes/no: both yes 20, A yes B no 5, A no B yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    a = cohen_kappa(pairs)
    assert (a.pairs, a.agreement, a.kappa) == (50, pytest.approx(0.7), pytest.approx(0.4))


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([]).pairs == 0 and cohen_kappa([]).kappa == 0.0
    assert cohen_kappa([("A", "A")] * 5).kappa == 1.0  # one category throughout, always agreeing
    assert cohen_kappa([("A", "B"), ("B", "A")]).kappa == pytest.approx(-1.0)
    # a rater who always says A agrees half the time with a balanced one, and kappa sees no skill
    assert cohen_kappa([("A", "A"), ("A", "B")] * 10).kappa == pytest.approx(0.0)

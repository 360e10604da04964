"""The ledger on SQLite and on the local PostgreSQL: idempotent ingest, routing, the leased queue,
decisions and their errors, overlap and agreement, the ordered accepted stream, migrations."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from charter.api.review import accepted_page, label_proto
from charter.core.db import normalise_url
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.core.settings import RoutingSettings
from charter.review.schema import accepted, decisions, labels, metadata, review_slots
from charter.review.store import Ledger, migrate
from charter.review.types import LabelQuery, LabelSource
from charter_proto.common.v1 import label_pb2
from charter_proto.review.v1 import review_pb2 as rv
from sqlalchemy import create_engine, func, select

from tests.support.hh import load_pairs
from tests.support.review import hh_label, hh_labels, submit

pytestmark = pytest.mark.integration

NO_AUDIT = RoutingSettings(audit_rate=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pairs():
    return load_pairs(40)


def counts(ledger: Ledger) -> dict[str, int]:
    with ledger.engine.connect() as c:
        return {
            t.name: c.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (labels, review_slots, decisions, accepted)
        }


def test_submit_is_idempotent_by_label_id(ledger_url, pairs):
    ledger = Ledger(ledger_url, NO_AUDIT)
    batch = [hh_label(p, i, confidence=0.9) for i, p in enumerate(pairs[:10])]
    first = submit(ledger, batch)
    assert [r.sequence for r in first] == list(range(1, 11))
    assert not any(r.duplicate for r in first)
    before = counts(ledger)
    again = submit(ledger, [batch[3], batch[3], hh_label(pairs[11], 11, confidence=0.9)])
    assert [(r.label_id, r.duplicate) for r in again] == [
        ("lbl-000003", True),
        ("lbl-000003", True),
        ("lbl-000011", False),
    ]
    assert again[0].sequence == first[3].sequence
    assert counts(ledger)["labels"] == before["labels"] + 1
    assert counts(ledger)["accepted"] == before["accepted"] + 1
    ledger.close()


def test_routing_reasons_are_recorded(ledger_url, pairs):
    ledger = Ledger(ledger_url, RoutingSettings(accept_confidence=0.5, audit_rate=0.0))
    cases = {
        "confident": hh_label(pairs[0], 0, confidence=0.8),
        "uncertain": hh_label(pairs[1], 1, confidence=0.2),
        "inconsistent": hh_label(pairs[2], 2, confidence=0.8, swap_consistent=False),
        "tie": hh_label(pairs[3], 3, confidence=0.0, status=label_pb2.LABEL_STATUS_TIE),
        "unscorable": hh_label(pairs[4], 4, confidence=0.0, status=label_pb2.LABEL_STATUS_UNSCORABLE),
    }
    results = dict(zip(cases, submit(ledger, list(cases.values())), strict=True))
    assert (results["confident"].route, results["confident"].reason) == (
        rv.ROUTE_AUTO_ACCEPTED,
        rv.ROUTE_REASON_CONFIDENT,
    )
    assert (results["uncertain"].route, results["uncertain"].reason) == (
        rv.ROUTE_HUMAN_REVIEW,
        rv.ROUTE_REASON_UNCERTAIN,
    )
    assert results["inconsistent"].reason == rv.ROUTE_REASON_SWAP_INCONSISTENT
    assert results["tie"].reason == rv.ROUTE_REASON_UNCERTAIN
    assert (results["unscorable"].route, results["unscorable"].reason) == (
        rv.ROUTE_REJECTED,
        rv.ROUTE_REASON_UNSCORABLE,
    )
    with ledger.engine.connect() as c:
        stored = dict(c.execute(select(labels.c.label_id, labels.c.reason)).all())
    assert stored["lbl-000002"] == rv.ROUTE_REASON_SWAP_INCONSISTENT
    stats = ledger.stats()
    assert (stats.labels_total, stats.auto_accepted, stats.queue_depth, stats.rejected) == (5, 1, 4, 1)
    ledger.close()


def test_requested_and_ensemble_split_labels_are_queued_with_their_reason(tmp_path, pairs):
    policy = RoutingSettings(audit_rate=0.0, max_ensemble_disagreement=0.5)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", policy)
    requested = hh_label(pairs[0], 0, confidence=0.95)  # confident, but a person was asked for
    requested.review_requested = True
    split = hh_label(pairs[1], 1, confidence=0.9)
    split.ensemble_disagreement = 2 / 3
    agreed = hh_label(pairs[2], 2, confidence=0.9)
    agreed.ensemble_disagreement = 0.5  # at the threshold: accepted
    results = submit(ledger, [requested, split, agreed])
    assert [(r.route, r.reason) for r in results] == [
        (rv.ROUTE_HUMAN_REVIEW, rv.ROUTE_REASON_REQUESTED),
        (rv.ROUTE_HUMAN_REVIEW, rv.ROUTE_REASON_ENSEMBLE_DISAGREEMENT),
        (rv.ROUTE_AUTO_ACCEPTED, rv.ROUTE_REASON_CONFIDENT),
    ]
    with ledger.engine.connect() as c:
        stored = dict(c.execute(select(labels.c.label_id, labels.c.reason)).all())
    assert stored == {"lbl-000000": 6, "lbl-000001": 7, "lbl-000002": 1}
    claimed = {ledger.claim("alice").item.reason, ledger.claim("bob").item.reason}
    assert claimed == {rv.ROUTE_REASON_REQUESTED, rv.ROUTE_REASON_ENSEMBLE_DISAGREEMENT}
    routes = {(r["route"], r["reason"]) for r in ledger.overview()["routes"]}  # the admin page's names
    assert {("human_review", "requested"), ("human_review", "ensemble_disagreement")} <= routes

    bad = hh_label(pairs[3], 3, confidence=0.9)
    bad.ensemble_disagreement = 1.5
    with pytest.raises(InvalidArgument, match=r"labels\[1\].ensemble_disagreement: must lie in \[0, 1\]"):
        submit(ledger, [hh_label(pairs[4], 4, confidence=0.9), bad])
    assert counts(ledger)["labels"] == 3
    ledger.close()


def test_audit_rate_sends_a_sample_of_confident_labels_to_people(ledger_url):
    ledger = Ledger(ledger_url, RoutingSettings(audit_rate=0.2, audit_seed="t"))
    results = submit(ledger, hh_labels(300, confidence=0.95))
    audited = sum(r.reason == rv.ROUTE_REASON_AUDIT for r in results)
    assert 35 <= audited <= 85  # 20% of 300 = 60
    assert ledger.stats().queue_depth == audited
    ledger.close()


def test_claim_gives_the_most_uncertain_first_and_leases_expire(ledger_url, pairs):
    clock = Clock()
    ledger = Ledger(ledger_url, NO_AUDIT, clock=clock, lease_seconds=60)
    submit(
        ledger,
        [hh_label(p, i, confidence=c) for i, (p, c) in enumerate(zip(pairs, (0.3, 0.05, 0.2), strict=False))],
    )
    first = ledger.claim("alice")
    assert first.item.item_id == "lbl-000001" and first.queue_depth == 2
    assert label_proto(first.item.payload).response_a == pairs[1].chosen
    second = ledger.claim("bob")
    assert second.item.item_id == "lbl-000002"
    clock.now += 61  # alice walks away: her item returns to the queue
    third = ledger.claim("carol")
    assert third.item.item_id == "lbl-000001"
    with pytest.raises(FailedPrecondition, match="not claimed with this lease"):
        ledger.decide("alice", "lbl-000001", first.item.lease_id, rv.HUMAN_CHOICE_A)
    ledger.close()


def test_decide_errors_change_nothing(ledger_url, pairs):
    clock = Clock()
    ledger = Ledger(ledger_url, NO_AUDIT, clock=clock, lease_seconds=60)
    submit(ledger, [hh_label(p, i, confidence=0.1) for i, p in enumerate(pairs[:3])])
    alice = ledger.claim("alice").item
    bob = ledger.claim("bob").item
    before = counts(ledger)
    with pytest.raises(FailedPrecondition, match="another reviewer"):
        ledger.decide("bob", alice.item_id, alice.lease_id, rv.HUMAN_CHOICE_A)
    with pytest.raises(InvalidArgument, match="unknown choice"):
        ledger.decide("alice", alice.item_id, alice.lease_id, 42)
    with pytest.raises(InvalidArgument, match="unknown choice"):
        ledger.decide("alice", alice.item_id, alice.lease_id, rv.HUMAN_CHOICE_UNSPECIFIED)
    with pytest.raises(NotFound):
        ledger.decide("alice", "no-such-item", alice.lease_id, rv.HUMAN_CHOICE_A)
    with pytest.raises(FailedPrecondition):
        ledger.decide("alice", alice.item_id, "forged-lease", rv.HUMAN_CHOICE_A)
    assert counts(ledger) == before
    ledger.decide("alice", alice.item_id, alice.lease_id, rv.HUMAN_CHOICE_B, "A helps with the crime")
    after_one = counts(ledger)
    with pytest.raises(FailedPrecondition, match="already decided"):
        ledger.decide("alice", alice.item_id, alice.lease_id, rv.HUMAN_CHOICE_A)
    clock.now += 61
    with pytest.raises(FailedPrecondition, match="expired"):
        ledger.decide("bob", bob.item_id, bob.lease_id, rv.HUMAN_CHOICE_A)
    assert counts(ledger) == after_one
    ledger.close()


def test_human_decision_overrides_the_ai_label_and_both_are_kept(ledger_url, pairs):
    ledger = Ledger(ledger_url, NO_AUDIT)
    submit(ledger, [hh_label(pairs[0], 0, confidence=0.3, a_wins=True)])
    item = ledger.claim("alice").item
    decided = ledger.decide("alice", item.item_id, item.lease_id, rv.HUMAN_CHOICE_B, "B refuses politely")
    a = decided.accepted
    assert a.source == rv.LABEL_SOURCE_HUMAN
    assert (a.p_a, a.choice) == (0.0, label_pb2.CHOICE_B)
    ai = label_proto(a.payload)
    assert ai.choice == label_pb2.CHOICE_A and ai.p_a == pytest.approx(0.65)  # the AI's, kept
    assert [(d.reviewer, d.choice, d.comment) for d in a.human_decisions] == [
        ("alice", rv.HUMAN_CHOICE_B, "B refuses politely")
    ]
    page = ledger.accepted_after(0)
    assert [x.sequence for x in page.labels] == [a.sequence]
    assert page.labels[0].human_decisions[0].reviewer == "alice"
    ledger.close()


def test_skip_returns_the_item_for_someone_else_and_release_hands_it_back(ledger_url, pairs):
    ledger = Ledger(ledger_url, NO_AUDIT)
    submit(ledger, [hh_label(pairs[0], 0, confidence=0.1)])
    item = ledger.claim("alice").item
    ledger.decide("alice", item.item_id, item.lease_id, rv.HUMAN_CHOICE_SKIP)
    assert ledger.claim("alice").item is None  # she passed on it
    bob = ledger.claim("bob").item
    assert bob.item_id == item.item_id
    ledger.release("bob", bob.item_id, bob.lease_id)
    assert ledger.stats().queue_depth == 1
    carol = ledger.claim("carol").item
    ledger.decide("carol", carol.item_id, carol.lease_id, rv.HUMAN_CHOICE_A)
    assert ledger.stats().human_accepted == 1
    ledger.close()


def test_overlap_collects_k_decisions_and_reports_kappa(ledger_url):
    ledger = Ledger(ledger_url, RoutingSettings(audit_rate=0.0, overlap=2))
    batch = hh_labels(8, confidence=0.2)
    for i, label in enumerate(batch):  # the AI says A on the even ones, B on the odd ones
        if i % 2:
            label.p_a, label.choice = 0.4, label_pb2.CHOICE_B
        label.principle_ids[:] = ["violence" if i < 4 else "privacy"]
    submit(ledger, batch)
    alice_choices = [rv.HUMAN_CHOICE_A, rv.HUMAN_CHOICE_B] * 4  # always agrees with the AI
    bob_choices = [rv.HUMAN_CHOICE_A] * 8
    for reviewer, choices in (("alice", alice_choices), ("bob", bob_choices)):
        for _ in range(8):
            item = ledger.claim(reviewer).item
            index = int(item.item_id.rsplit("-", 1)[1])
            assert item.decisions_needed == 2
            ledger.decide(reviewer, item.item_id, item.lease_id, choices[index])
        assert ledger.claim(reviewer).item is None  # never the same item twice
    stats = ledger.stats()
    assert stats.human_accepted == 8 and stats.queue_depth == 0
    assert stats.human_human.pairs == 8
    assert stats.human_human.agreement == pytest.approx(0.5)
    assert stats.human_human.kappa == pytest.approx(0.0)
    assert stats.human_ai.pairs == 16
    assert stats.human_ai.agreement == pytest.approx(12 / 16)
    reviewers = {r.reviewer: r for r in stats.reviewers}
    assert reviewers["alice"].with_ai.kappa == pytest.approx(1.0)
    assert reviewers["bob"].with_ai.agreement == pytest.approx(0.5)
    assert set(stats.human_ai_by_principle) == {"violence", "privacy"}
    # A+A -> p_a 1; A+B -> p_a 0.5, a tie
    streamed = {x.label_id: x for x in ledger.accepted_after(0).labels}
    assert streamed["lbl-000000"].p_a == 1.0 and streamed["lbl-000001"].choice == label_pb2.CHOICE_TIE
    ledger.close()


def test_unsafe_both_excludes_the_pair_from_training(ledger_url, pairs):
    ledger = Ledger(ledger_url, NO_AUDIT)
    submit(ledger, [hh_label(pairs[0], 0, confidence=0.1)])
    item = ledger.claim("alice").item
    decided = ledger.decide("alice", item.item_id, item.lease_id, rv.HUMAN_CHOICE_UNSAFE_BOTH)
    assert decided.accepted is None
    assert ledger.accepted_after(0).labels == []
    assert ledger.overview()["closed"] == {"unsafe": 1}
    ledger.close()


def test_twenty_concurrent_reviewers_never_share_an_item(ledger_url):
    ledger = Ledger(ledger_url, NO_AUDIT)
    submit(ledger, hh_labels(60, confidence=0.1))
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def reviewer(name: str) -> None:
        try:
            for _ in range(3):
                item = ledger.claim(name).item
                with lock:
                    claimed.append(item.item_id)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=reviewer, args=(f"r{i:02d}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(claimed) == 60 and len(set(claimed)) == 60
    assert ledger.stats().claimed == 60 and ledger.stats().queue_depth == 0
    ledger.close()


def test_concurrent_claims_with_overlap_give_each_item_to_k_different_reviewers(ledger_url):
    ledger = Ledger(ledger_url, RoutingSettings(audit_rate=0.0, overlap=2))
    submit(ledger, hh_labels(10, confidence=0.1))
    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def reviewer(name: str) -> None:
        item = ledger.claim(name).item
        if item is not None:
            with lock:
                got.append((item.item_id, name))

    threads = [threading.Thread(target=reviewer, args=(f"r{i:02d}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_item = Counter(item for item, _ in got)
    assert len(got) == 20 and set(per_item.values()) == {2}
    ledger.close()


def test_stream_is_ordered_resumable_and_filtered(ledger_url, pairs):
    ledger = Ledger(ledger_url, NO_AUDIT)
    submit(
        ledger,
        [
            hh_label(p, i, confidence=0.9, principle="violence" if i % 2 else "privacy")
            for i, p in enumerate(pairs[:20])
        ],
    )
    submit(ledger, [hh_label(pairs[20], 20, confidence=0.1)])
    item = ledger.claim("alice").item
    ledger.decide("alice", item.item_id, item.lease_id, rv.HUMAN_CHOICE_A)
    everything = [x.sequence for x in ledger.accepted_after(0, limit=1000).labels]
    assert everything == sorted(everything) and len(everything) == 21
    page = ledger.accepted_after(0, limit=7)
    assert page.more and [x.sequence for x in page.labels] == everything[:7]
    rest = ledger.accepted_after(page.last, limit=100)
    assert [x.sequence for x in rest.labels] == everything[7:] and not rest.more
    human = ledger.accepted_after(0, LabelQuery(sources=(LabelSource.HUMAN,)))
    assert [x.label_id for x in human.labels] == ["lbl-000020"]
    violence = accepted_page(ledger, 0, rv.LabelFilter(principle_ids=["violence"]))  # matched on the labels
    assert len(violence.labels) == 11  # ten odd ones and the human-decided one
    assert ledger.accepted_after(0, LabelQuery(constitution_id="other")).labels == []
    assert len(ledger.accepted_after(0, LabelQuery(min_confidence=0.95)).labels) == 1  # the human's p_a = 1
    ledger.close()


def test_bad_labels_are_rejected_whole(ledger_url, pairs):
    ledger = Ledger(ledger_url, NO_AUDIT, max_label_bytes=4096)
    good = hh_label(pairs[0], 0, confidence=0.9)
    huge = hh_label(pairs[1], 1, confidence=0.9)
    huge.response_a = "x" * 10_000
    with pytest.raises(InvalidArgument, match=r"labels\[1\]: .* the limit is 4096"):
        submit(ledger, [good, huge])
    no_id = hh_label(pairs[2], 2, confidence=0.9)
    no_id.id = ""
    with pytest.raises(InvalidArgument, match=r"labels\[0\].id"):
        submit(ledger, [no_id])
    assert counts(ledger)["labels"] == 0
    ledger.close()


def test_migrations_build_exactly_the_declared_schema(ledger_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(normalise_url(ledger_url))
    migrate(engine)
    migrate(engine)  # a second start finds nothing to do
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_a_choice_this_build_does_not_know_is_stored_and_streamed_as_it_came(ledger_url, pairs):
    """A newer writer's enum value is data, not an error: the stream (and a page of it) carries it as
    sent. Found by the fuzz suite: StreamLabels answered INTERNAL for a stored choice of 99."""
    ledger = Ledger(ledger_url, NO_AUDIT)
    label = hh_label(pairs[0], 0, confidence=0.9)
    label.choice = 99
    submit(ledger, [label])
    (streamed,) = ledger.accepted_after(0).labels
    assert int(streamed.choice) == 99
    assert accepted_page(ledger, 0, rv.LabelFilter()).labels[0].label.choice == 99
    ledger.close()

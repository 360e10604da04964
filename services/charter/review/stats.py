"""The ledger's figures: queue depth, totals, human–human and human–AI agreement (overall, by
principle, by reviewer) and the admin page's overview. Read-only queries over the ledger's tables."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from charter.review.agreement import Agreement, cohen_kappa
from charter.review.schema import accepted, decisions, items_closed, labels, review_slots
from charter.review.types import (
    CHOICE_NAMES,
    Choice,
    HumanChoice,
    LabelSource,
    ReviewerStats,
    Route,
    RouteReason,
    Stats,
    key,
)

_CATEGORY = {
    HumanChoice.A: CHOICE_NAMES[Choice.A],
    HumanChoice.B: CHOICE_NAMES[Choice.B],
    HumanChoice.TIE: CHOICE_NAMES[Choice.TIE],
    HumanChoice.UNSAFE_BOTH: "unsafe",
}
"""A human decision as an agreement category, comparable with the AI's choice names."""


def free_slots(now: float) -> Any:
    """Review slots waiting for a reviewer: not decided, not under a live lease."""
    s = review_slots.c
    return and_(s.done.is_(False), or_(s.lease_expires_at.is_(None), s.lease_expires_at < now))


def queue_depth(conn: Connection, now: float, constitution_id: str = "") -> int:
    q = select(func.count()).select_from(review_slots).where(free_slots(now))
    if constitution_id:
        q = q.where(review_slots.c.constitution_id == constitution_id)
    return int(conn.execute(q).scalar_one())


def read_stats(conn: Connection, now: float, constitution_id: str = "") -> Stats:
    """Totals and agreement, over every constitution or one."""

    def scoped(q: Any, column: Any) -> Any:
        return q.where(column == constitution_id) if constitution_id else q

    def count(q: Any) -> int:
        return int(conn.execute(q).scalar_one())

    s = review_slots.c
    total = count(scoped(select(func.count()).select_from(labels), labels.c.constitution_id))
    depth = queue_depth(conn, now, constitution_id)
    claimed = count(
        scoped(
            select(func.count())
            .select_from(review_slots)
            .where(s.done.is_(False), s.lease_expires_at >= now),
            s.constitution_id,
        )
    )
    by_source = dict(
        conn.execute(
            scoped(
                select(accepted.c.source, func.count()).group_by(accepted.c.source),
                accepted.c.constitution_id,
            )
        ).all()
    )
    rejected = count(
        scoped(
            select(func.count()).select_from(labels).where(labels.c.route == Route.REJECTED),
            labels.c.constitution_id,
        )
    )
    last = count(scoped(select(func.coalesce(func.max(accepted.c.seq), 0)), accepted.c.constitution_id))
    q = (
        select(
            decisions.c.item_id,
            decisions.c.reviewer,
            decisions.c.choice,
            labels.c.choice.label("ai_choice"),
            labels.c.principle_id,
        )
        .join(labels, labels.c.label_id == decisions.c.item_id)
        .where(decisions.c.choice != HumanChoice.SKIP)
        .order_by(decisions.c.decision_id)
    )
    votes = conn.execute(scoped(q, labels.c.constitution_id)).all()
    human_human, human_ai, by_principle, by_reviewer = agreements(votes)
    return Stats(
        labels_total=total,
        queue_depth=depth,
        claimed=claimed,
        auto_accepted=by_source.get(LabelSource.AI, 0),
        human_accepted=by_source.get(LabelSource.HUMAN, 0),
        rejected=rejected,
        human_human=human_human,
        human_ai=human_ai,
        human_ai_by_principle=dict(sorted(by_principle.items())),
        reviewers=[ReviewerStats(r, n, a) for r, (n, a) in sorted(by_reviewer.items())],
        last_sequence=last,
    )


def agreements(
    votes: Sequence[Any],
) -> tuple[Agreement, Agreement, dict[str, Agreement], dict[str, tuple[int, Agreement]]]:
    """(human–human, human–AI, human–AI by principle, (decisions, with-AI agreement) by reviewer) over
    decisions with `item_id`, `reviewer`, `choice`, `ai_choice` and `principle_id`, oldest first."""
    by_item: dict[str, list[Any]] = defaultdict(list)
    ai_pairs: list[tuple[str, str]] = []
    principle_pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    reviewer_pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    reviewer_n: dict[str, int] = defaultdict(int)
    for v in votes:
        by_item[v.item_id].append(v)
        reviewer_n[v.reviewer] += 1
        human, ai = _CATEGORY[v.choice], CHOICE_NAMES.get(v.ai_choice)
        if ai is None or human == "unsafe":  # no AI preference, or no human preference, to compare
            continue
        ai_pairs.append((human, ai))
        principle_pairs[v.principle_id or "(none)"].append((human, ai))
        reviewer_pairs[v.reviewer].append((human, ai))
    hh = [
        (_CATEGORY[a.choice], _CATEGORY[b.choice])
        for item in by_item.values()
        for i, a in enumerate(item)
        for b in item[i + 1 :]
        if a.reviewer != b.reviewer
    ]
    return (
        cohen_kappa(hh),
        cohen_kappa(ai_pairs),
        {p: cohen_kappa(pairs) for p, pairs in principle_pairs.items()},
        {r: (n, cohen_kappa(reviewer_pairs.get(r, []))) for r, n in reviewer_n.items()},
    )


def read_overview(conn: Connection, bins: int = 10) -> dict[str, Any]:
    """For the admin page: labels by route and reason, the AI confidence histogram, closed items by
    outcome."""
    routes = conn.execute(
        select(labels.c.route, labels.c.reason, func.count()).group_by(labels.c.route, labels.c.reason)
    ).all()
    bucket = func.floor(labels.c.confidence * bins)
    histogram: dict[Any, Any] = dict(conn.execute(select(bucket, func.count()).group_by(bucket)).all())
    outcomes: dict[Any, Any] = dict(
        conn.execute(select(items_closed.c.outcome, func.count()).group_by(items_closed.c.outcome)).all()
    )
    counts = [0] * bins
    for b, n in histogram.items():
        counts[min(int(b), bins - 1)] += int(n)
    return {
        "routes": [
            {"route": key(Route(r)), "reason": key(RouteReason(reason)), "labels": int(n)}
            for r, reason, n in routes
        ],
        "confidence_histogram": {"edges": [i / bins for i in range(bins + 1)], "counts": counts},
        "closed": {k: int(v) for k, v in outcomes.items()},
    }

"""What the review page's JSON API returns: claimed items, decisions, a reviewer's figures and the
admin overview, as plain JSON-ready dicts. Model text is passed through untouched: the page inserts
it as text, never as HTML."""

from __future__ import annotations

from typing import Any

from charter.review.agreement import Agreement
from charter.review.types import (
    CHOICE_NAMES,
    HUMAN_CHOICE_NAMES,
    Decided,
    LabelView,
    ReviewerStats,
    ReviewItem,
    Stats,
    key,
)


def agreement_json(a: Agreement) -> dict[str, Any]:
    return {"pairs": a.pairs, "agreement": a.agreement, "kappa": a.kappa}


def item_json(item: ReviewItem, label: LabelView, now: float) -> dict[str, Any]:
    """A claimed review item (`label`: its payload, decoded) as the page shows it."""
    return {
        "item_id": item.item_id,
        "lease_id": item.lease_id,
        "lease_expires_at": item.lease_expires_at,
        "lease_seconds_left": max(0.0, item.lease_expires_at - now),
        "reason": key(item.reason),
        "priority": item.priority,
        "decisions_needed": item.decisions_needed,
        "decisions_received": item.decisions_received,
        "conversation": [{"role": role, "content": content} for role, content in label.conversation],
        "response_a": label.response_a,
        "response_b": label.response_b,
        "principle_ids": list(label.principle_ids),
        "constitution": {"id": label.constitution_id, "version": label.constitution_version},
        "ai": {
            "p_a": label.p_a,
            "choice": CHOICE_NAMES.get(label.choice, "none"),
            "confidence": label.confidence,
            "swap_consistent": label.swap_consistent,
            "status": label.status,
            "status_detail": label.status_detail,
        },
    }


def decided_json(decided: Decided) -> dict[str, Any]:
    d, a = decided.decision, decided.accepted
    return {
        "decision": {
            "item_id": d.item_id,
            "reviewer": d.reviewer,
            "choice": HUMAN_CHOICE_NAMES.get(d.choice, "unspecified"),
            "comment": d.comment,
            "decided_at": d.decided_at,
        },
        "accepted": None
        if a is None
        else {
            "sequence": a.sequence,
            "source": key(a.source),
            "p_a": a.p_a,
            "choice": CHOICE_NAMES.get(a.choice, "none"),
        },
    }


def reviewer_stats_json(stats: Stats, name: str) -> dict[str, Any]:
    mine = next(
        (r for r in stats.reviewers if r.reviewer == name),
        ReviewerStats(name, 0, Agreement(0, 0.0, 0.0)),
    )
    return {
        "reviewer": name,
        "queue_depth": stats.queue_depth,
        "decisions": mine.decisions,
        "with_ai": agreement_json(mine.with_ai),
        "human_ai": agreement_json(stats.human_ai),
        "human_human": agreement_json(stats.human_human),
    }


def overview_json(stats: Stats, overview: dict[str, Any], accept_confidence: float) -> dict[str, Any]:
    total = stats.labels_total

    def rate(n: int) -> float | None:
        return n / total if total else None

    closed = overview.get("closed", {})
    closed_total = sum(closed.values())
    return {
        "totals": {
            "labels_total": total,
            "queue_depth": stats.queue_depth,
            "claimed": stats.claimed,
            "auto_accepted": stats.auto_accepted,
            "human_accepted": stats.human_accepted,
            "rejected": stats.rejected,
            "last_sequence": stats.last_sequence,
        },
        "rates": {
            "auto_accepted": rate(stats.auto_accepted),
            "human_accepted": rate(stats.human_accepted),
            "rejected": rate(stats.rejected),
            "accepted": rate(stats.auto_accepted + stats.human_accepted),
            "review_accepted": closed.get("accepted", 0) / closed_total if closed_total else None,
        },
        "agreement": {
            "human_human": agreement_json(stats.human_human),
            "human_ai": agreement_json(stats.human_ai),
            "by_principle": {p: agreement_json(a) for p, a in sorted(stats.human_ai_by_principle.items())},
            "by_reviewer": [
                {"reviewer": r.reviewer, "decisions": r.decisions, **agreement_json(r.with_ai)}
                for r in stats.reviewers
            ],
        },
        "routes": overview.get("routes", []),
        "confidence_histogram": overview.get("confidence_histogram", {"edges": [], "counts": []}),
        "closed": closed,
        "accept_confidence": accept_confidence,
    }

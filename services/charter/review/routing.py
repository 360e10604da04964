"""The routing policy: which labels are trusted as they are and which wait for a person. Pure."""

from __future__ import annotations

import hashlib

from charter.core.settings import RoutingSettings
from charter.review.types import LabelStatus, Route, RouteReason, Routing, Submission

_SCORED = (LabelStatus.OK, LabelStatus.TIE)


def audit_draw(label_id: str, seed: str) -> float:
    """A uniform number in [0, 1) fixed by the label id and the seed (reproducible audit sample)."""
    digest = hashlib.sha256(f"{seed}\x00{label_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route(label: Submission, policy: RoutingSettings) -> Routing:
    """Unscorable labels are rejected (a person may still decide them); a label its producer wants a
    person to decide goes to people; tied, low-confidence, swap-inconsistent labels and labels whose
    pair a reward-model ensemble disagrees on go to people, most uncertain first; an audit sample of the
    confident ones goes to people too; the rest are accepted. The first rule that applies gives the
    reason (docs/review.md, Routing)."""
    uncertainty = 1.0 - min(max(label.confidence, 0.0), 1.0)
    if label.status not in _SCORED:
        return Routing(Route.REJECTED, RouteReason.UNSCORABLE, 1.0)
    if label.review_requested:
        return Routing(Route.HUMAN_REVIEW, RouteReason.REQUESTED, uncertainty)
    if label.status == LabelStatus.TIE or label.confidence < policy.accept_confidence:
        return Routing(Route.HUMAN_REVIEW, RouteReason.UNCERTAIN, uncertainty)
    if not label.swap_consistent:
        return Routing(Route.HUMAN_REVIEW, RouteReason.SWAP_INCONSISTENT, uncertainty)
    disagreement = label.ensemble_disagreement
    if disagreement is not None and disagreement > policy.max_ensemble_disagreement:
        return Routing(Route.HUMAN_REVIEW, RouteReason.ENSEMBLE_DISAGREEMENT, uncertainty)
    if audit_draw(label.label_id, policy.audit_seed) < policy.audit_rate:
        return Routing(Route.HUMAN_REVIEW, RouteReason.AUDIT, uncertainty)
    return Routing(Route.AUTO_ACCEPTED, RouteReason.CONFIDENT, uncertainty)

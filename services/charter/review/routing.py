"""The routing policy: which labels are trusted as they are and which wait for a person. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from charter_proto.common.v1 import label_pb2
from charter_proto.review.v1 import review_pb2

from charter.core.settings import RoutingSettings

_SCORED = (label_pb2.LABEL_STATUS_OK, label_pb2.LABEL_STATUS_TIE)


@dataclass(frozen=True)
class Routing:
    route: int
    """review_pb2.Route"""
    reason: int
    """review_pb2.RouteReason"""
    priority: float
    """Queue order for human review: higher first (the most uncertain)."""

    @property
    def queued(self) -> bool:
        return self.route != review_pb2.ROUTE_AUTO_ACCEPTED


def audit_draw(label_id: str, seed: str) -> float:
    """A uniform number in [0, 1) fixed by the label id and the seed (reproducible audit sample)."""
    digest = hashlib.sha256(f"{seed}\x00{label_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route(label: label_pb2.PreferenceLabel, policy: RoutingSettings) -> Routing:
    """Unscorable labels are rejected (a person may still decide them); tied, swap-inconsistent and
    low-confidence labels go to people, most uncertain first; an audit sample of the confident ones
    goes to people too; the rest are accepted."""
    uncertainty = 1.0 - min(max(label.confidence, 0.0), 1.0)
    if label.status not in _SCORED:
        return Routing(review_pb2.ROUTE_REJECTED, review_pb2.ROUTE_REASON_UNSCORABLE, 1.0)
    if label.status == label_pb2.LABEL_STATUS_TIE or label.confidence < policy.accept_confidence:
        return Routing(review_pb2.ROUTE_HUMAN_REVIEW, review_pb2.ROUTE_REASON_UNCERTAIN, uncertainty)
    if not label.swap_consistent:
        return Routing(review_pb2.ROUTE_HUMAN_REVIEW, review_pb2.ROUTE_REASON_SWAP_INCONSISTENT, uncertainty)
    if audit_draw(label.id, policy.audit_seed) < policy.audit_rate:
        return Routing(review_pb2.ROUTE_HUMAN_REVIEW, review_pb2.ROUTE_REASON_AUDIT, uncertainty)
    return Routing(review_pb2.ROUTE_AUTO_ACCEPTED, review_pb2.ROUTE_REASON_CONFIDENT, uncertainty)

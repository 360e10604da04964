"""The review ledger's domain types: plain dataclasses and the codes it stores.

The enums' values are the codes the ledger has always written to its database, which are also the
wire values of the ReviewService's and `charter.common.v1`'s enums (`charter.api.review` converts by
value; its tests check the two agree member by member). Each enum has one name table here; names of
members without an entry are the member name, lower-cased (`key`).

A submitted label is a log entry: the ledger indexes the fields it routes, queues, filters and counts
on (`Submission`) and keeps the label itself as an opaque payload (the serialised PreferenceLabel it
has always stored), handing the bytes back unchanged on claims and on the accepted stream. Decoding
them is the API layer's job (`charter.api.review`): the ledger never needs a label's text, and the
stream serves payloads without re-encoding them (the figure `benchmarks/ledger.py` measures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar

from charter.review.agreement import Agreement


class Route(IntEnum):
    UNSPECIFIED = 0
    AUTO_ACCEPTED = 1
    HUMAN_REVIEW = 2
    REJECTED = 3


class RouteReason(IntEnum):
    UNSPECIFIED = 0
    CONFIDENT = 1
    UNCERTAIN = 2
    SWAP_INCONSISTENT = 3
    AUDIT = 4
    UNSCORABLE = 5
    REQUESTED = 6
    ENSEMBLE_DISAGREEMENT = 7


class HumanChoice(IntEnum):
    """A reviewer's decision on an item."""

    UNSPECIFIED = 0
    A = 1
    B = 2
    TIE = 3
    UNSAFE_BOTH = 4
    SKIP = 5


class LabelSource(IntEnum):
    """Who decided an accepted label."""

    UNSPECIFIED = 0
    AI = 1
    HUMAN = 2


E = TypeVar("E", bound=IntEnum)


def as_enum(enum: type[E], value: int) -> E | int:
    """A stored or wire value as the domain enum; a value this build does not know stays a plain
    int (stored, compared and streamed as it came: a newer writer's choice is not an error)."""
    try:
        return enum(value)
    except ValueError:
        return value


class Choice(IntEnum):
    """A label's preference: the AI's, or an accepted label's effective one."""

    UNSPECIFIED = 0
    A = 1
    B = 2
    TIE = 3


class LabelStatus(IntEnum):
    """The judge's verdict on a label (only OK and TIE labels carry a preference)."""

    UNSPECIFIED = 0
    OK = 1
    TIE = 2
    UNSCORABLE = 3
    ERROR = 4
    INVALID_INPUT = 5


def key(member: IntEnum) -> str:
    """`RouteReason.SWAP_INCONSISTENT` -> `swap_inconsistent`: the name in metrics, pages and records."""
    return member.name.lower()


CHOICE_NAMES: dict[int, str] = {Choice.A: "A", Choice.B: "B", Choice.TIE: "tie"}
"""A label's choice as records, pages and agreement tables name it (no entry: no preference)."""

HUMAN_CHOICE_NAMES: dict[int, str] = {
    HumanChoice.A: "A",
    HumanChoice.B: "B",
    HumanChoice.TIE: "tie",
    HumanChoice.UNSAFE_BOTH: "unsafe_both",
    HumanChoice.SKIP: "skip",
}
"""A reviewer's choice as the page names (and reads) it; records and metrics use it lower-cased."""

DECIDED = (HumanChoice.A, HumanChoice.B, HumanChoice.TIE, HumanChoice.UNSAFE_BOTH)
"""Choices that count as a decision (SKIP hands the item back)."""
CHOICES = (*DECIDED, HumanChoice.SKIP)
"""Every choice a reviewer may send."""


@dataclass(frozen=True)
class Submission:
    """A judged label as the ledger takes it: the fields it indexes, and the label as `payload`."""

    label_id: str
    """The label's content-derived id: a resubmission is a no-op."""
    constitution_id: str
    principle_ids: tuple[str, ...]
    p_a: float
    choice: Choice | int
    """An unknown number (a newer producer's) stays a plain int (`as_enum`); so for `status`."""
    confidence: float
    swap_consistent: bool
    status: LabelStatus | int
    payload: bytes
    """The label as submitted (a serialised `PreferenceLabel`), kept as it is."""
    ensemble_disagreement: float | None = None
    """How much a reward-model ensemble disagrees on the pair, in [0, 1]; None: not measured."""
    review_requested: bool = False
    """The producer asks that a person decide this label, however confident it is."""


@dataclass(frozen=True)
class Routing:
    route: Route
    reason: RouteReason
    priority: float
    """Queue order for human review: higher first (the most uncertain)."""

    @property
    def queued(self) -> bool:
        return self.route != Route.AUTO_ACCEPTED


@dataclass(frozen=True)
class SubmitResult:
    label_id: str
    sequence: int
    """The label's ledger sequence (its first submission's, for a duplicate)."""
    route: Route
    reason: RouteReason
    duplicate: bool = False


@dataclass(frozen=True)
class ReviewItem:
    """A queued label leased to one reviewer."""

    item_id: str
    """The label's id."""
    payload: bytes
    """The label, as submitted."""
    reason: RouteReason
    priority: float
    lease_id: str
    lease_expires_at: float
    """Unix seconds."""
    decisions_needed: int
    decisions_received: int


@dataclass(frozen=True)
class HumanDecision:
    item_id: str
    reviewer: str
    choice: HumanChoice
    comment: str
    decided_at: float
    """Unix seconds."""


@dataclass(frozen=True)
class AcceptedLabel:
    """An entry of the accepted stream: the effective label (a human decision overrides the AI's)."""

    sequence: int
    """The stream cursor."""
    label_id: str
    source: LabelSource
    p_a: float
    choice: Choice | int
    accepted_at: float
    """Unix seconds."""
    payload: bytes
    """The label as submitted: the AI's own preference, kept."""
    human_decisions: tuple[HumanDecision, ...] = ()
    """The decisions behind a human-accepted label (skips left out), oldest first."""


@dataclass(frozen=True)
class LabelQuery:
    """Which accepted labels to read; empty fields match everything."""

    constitution_id: str = ""
    sources: tuple[LabelSource | int, ...] = ()
    min_confidence: float | None = None


@dataclass(frozen=True)
class Claimed:
    item: ReviewItem | None
    queue_depth: int


@dataclass(frozen=True)
class Page:
    labels: list[AcceptedLabel]
    last: int
    """The last sequence examined: continue from here (the filter may have dropped every row)."""
    more: bool
    """The page was full: ask again at once."""


@dataclass(frozen=True)
class Decided:
    decision: HumanDecision
    accepted: AcceptedLabel | None
    """The label this decision accepted (the last wanted decision on an item), if any."""


@dataclass(frozen=True)
class ReviewerStats:
    reviewer: str
    decisions: int
    with_ai: Agreement


@dataclass(frozen=True)
class Stats:
    labels_total: int
    queue_depth: int
    claimed: int
    auto_accepted: int
    human_accepted: int
    rejected: int
    human_human: Agreement
    human_ai: Agreement
    human_ai_by_principle: dict[str, Agreement] = field(default_factory=dict)
    reviewers: list[ReviewerStats] = field(default_factory=list)
    last_sequence: int = 0


@dataclass(frozen=True)
class LabelView:
    """What the review page shows of a label (decoded from its payload by the API layer)."""

    conversation: list[tuple[str, str]]
    """(role, content) per message; role is `system`, `user`, `assistant` or `unspecified`."""
    response_a: str
    response_b: str
    principle_ids: list[str]
    constitution_id: str
    constitution_version: str
    p_a: float
    choice: Choice | int
    confidence: float
    swap_consistent: bool
    status: str
    """The judge's status name (`ok`, `tie`, `unscorable`, …)."""
    status_detail: str

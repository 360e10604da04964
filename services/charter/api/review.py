"""Review service messages <-> the ledger's domain types (`charter.review.types`), and accepted
labels as export rows.

The ledger keeps a submitted label as an opaque payload (the serialised `PreferenceLabel`) beside
the fields it indexes; this module is where that payload is made (`submission`) and read
(`accepted_proto`, `review_item_proto`, `label_view`). The domain enums' values are the wire values
(`charter.review.types`; `tests/unit/test_review_api.py` checks them member by member), so enums
convert by value, and their names come from the one table per enum in `charter.review.types`.

A stream filter's principle ids are matched here, on the decoded labels (`accepted_page`): the
ledger indexes only a label's first principle, and a label matches when any of its principles does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from charter_proto.common.v1 import conversation_pb2, label_pb2
from charter_proto.review.v1 import review_pb2
from google.protobuf import json_format

from charter.api import common
from charter.api.judge import STATUS_NAMES
from charter.datasets.preference import preference_row as build_preference_row
from charter.review.agreement import Agreement
from charter.review.export import Row, check_format, row_format
from charter.review.store import Ledger
from charter.review.types import (
    CHOICE_NAMES,
    AcceptedLabel,
    Choice,
    Decided,
    HumanChoice,
    HumanDecision,
    LabelQuery,
    LabelSource,
    LabelStatus,
    LabelView,
    ReviewItem,
    Stats,
    Submission,
    SubmitResult,
    as_enum,
    key,
)

SOURCES = {key(s): s for s in (LabelSource.AI, LabelSource.HUMAN)}
"""Label sources by name (`ai`, `human`), as `charter export --source` takes them."""


def role_name(role: conversation_pb2.Role.ValueType) -> str:
    """`ROLE_USER` -> `user`; `unspecified` for a value this build does not know."""
    return common.ROLE_NAMES.get(role, "unspecified")


# -- in: labels and filters ----------------------------------------------------------------------


def submission(label: label_pb2.PreferenceLabel) -> Submission:
    """A judged label as the ledger takes it (its payload: the label, serialised)."""
    return Submission(
        label_id=label.id,
        constitution_id=label.constitution.id,
        principle_ids=tuple(label.principle_ids),
        p_a=label.p_a,
        choice=as_enum(Choice, label.choice),
        confidence=label.confidence,
        swap_consistent=label.swap_consistent,
        status=as_enum(LabelStatus, label.status),
        payload=label.SerializeToString(),
        ensemble_disagreement=(
            label.ensemble_disagreement if label.HasField("ensemble_disagreement") else None
        ),
        review_requested=label.review_requested,
    )


def submissions(labels: Iterable[label_pb2.PreferenceLabel]) -> list[Submission]:
    return [submission(label) for label in labels]


def label_query(flt: review_pb2.LabelFilter | None) -> LabelQuery | None:
    """The ledger's part of a stream filter (principles are matched by `accepted_page`)."""
    if flt is None:
        return None
    return LabelQuery(
        constitution_id=flt.constitution_id,
        sources=tuple(as_enum(LabelSource, s) for s in flt.sources),
        min_confidence=flt.min_confidence if flt.HasField("min_confidence") else None,
    )


# -- out: results, items, decisions, accepted labels, figures ---------------------------------------


def submit_result_proto(r: SubmitResult) -> review_pb2.SubmitResult:
    return review_pb2.SubmitResult(
        label_id=r.label_id,
        sequence=r.sequence,
        duplicate=r.duplicate,
        route=cast("review_pb2.Route.ValueType", r.route),
        reason=cast("review_pb2.RouteReason.ValueType", r.reason),
    )


def submit_response(results: Sequence[SubmitResult]) -> review_pb2.SubmitResponse:
    return review_pb2.SubmitResponse(results=[submit_result_proto(r) for r in results])


def label_proto(payload: bytes) -> label_pb2.PreferenceLabel:
    return label_pb2.PreferenceLabel.FromString(payload)


def review_item_proto(item: ReviewItem) -> review_pb2.ReviewItem:
    return review_pb2.ReviewItem(
        item_id=item.item_id,
        label=label_proto(item.payload),
        reason=cast("review_pb2.RouteReason.ValueType", item.reason),
        priority=item.priority,
        lease_id=item.lease_id,
        lease_expires_at=common.timestamp(item.lease_expires_at),
        decisions_needed=item.decisions_needed,
        decisions_received=item.decisions_received,
    )


def decision_proto(d: HumanDecision) -> review_pb2.HumanDecision:
    return review_pb2.HumanDecision(
        item_id=d.item_id,
        label_id=d.item_id,
        reviewer=d.reviewer,
        choice=cast("review_pb2.HumanChoice.ValueType", d.choice),
        comment=d.comment,
        decided_at=common.timestamp(d.decided_at),
    )


def accepted_proto(a: AcceptedLabel) -> review_pb2.AcceptedLabel:
    out = review_pb2.AcceptedLabel(
        sequence=a.sequence,
        source=cast("review_pb2.LabelSource.ValueType", a.source),
        p_a=a.p_a,
        choice=cast("label_pb2.Choice.ValueType", a.choice),
        human_decisions=[decision_proto(d) for d in a.human_decisions],
    )
    out.label.MergeFromString(a.payload)  # parsed in place, not copied in
    out.accepted_at.FromNanoseconds(int(a.accepted_at * 1e9))
    return out


def decide_response(decided: Decided) -> review_pb2.DecideResponse:
    return review_pb2.DecideResponse(
        decision=decision_proto(decided.decision),
        accepted=None if decided.accepted is None else accepted_proto(decided.accepted),
    )


def agreement_proto(a: Agreement) -> review_pb2.Agreement:
    return review_pb2.Agreement(pairs=a.pairs, agreement=a.agreement, cohen_kappa=a.kappa)


def stats_proto(stats: Stats) -> review_pb2.StatsResponse:
    response = review_pb2.StatsResponse(
        labels_total=stats.labels_total,
        queue_depth=stats.queue_depth,
        claimed=stats.claimed,
        auto_accepted=stats.auto_accepted,
        human_accepted=stats.human_accepted,
        rejected=stats.rejected,
        human_human=agreement_proto(stats.human_human),
        human_ai=agreement_proto(stats.human_ai),
        last_cursor=review_pb2.LabelCursor(sequence=stats.last_sequence),
    )
    for principle, agreement in sorted(stats.human_ai_by_principle.items()):
        response.human_ai_by_principle[principle].CopyFrom(agreement_proto(agreement))
    for r in stats.reviewers:
        response.reviewers.add(reviewer=r.reviewer, decisions=r.decisions, with_ai=agreement_proto(r.with_ai))
    return response


@dataclasses.dataclass(frozen=True)
class AcceptedPage:
    labels: list[review_pb2.AcceptedLabel]
    last: int
    """The last sequence examined: continue from here (the filter may have dropped every row)."""
    more: bool
    """The page was full: ask again at once."""


def accepted_page(
    ledger: Ledger, cursor: int, flt: review_pb2.LabelFilter | None = None, limit: int = 1000
) -> AcceptedPage:
    """The next page of the accepted stream after `cursor` as messages, `flt` applied whole."""
    page = ledger.accepted_after(cursor, label_query(flt), limit)
    labels = [accepted_proto(a) for a in page.labels]
    if flt is not None and flt.principle_ids:
        wanted = set(flt.principle_ids)
        labels = [x for x in labels if wanted.intersection(x.label.principle_ids)]
    return AcceptedPage(labels, page.last, page.more)


def ledger_labels(
    ledger: Ledger, from_cursor: int = 0, flt: review_pb2.LabelFilter | None = None, batch: int = 1000
) -> Iterator[review_pb2.AcceptedLabel]:
    """Every accepted label after `from_cursor` read from a ledger in this process, in order."""
    cursor = from_cursor
    while True:
        page = accepted_page(ledger, cursor, flt, batch)
        yield from page.labels
        cursor = page.last
        if not page.more:
            return


def label_view(payload: bytes) -> LabelView:
    """What the review page shows of a label (`charter.review.web` is given this decoder)."""
    label = label_proto(payload)
    return LabelView(
        conversation=[(role_name(m.role), m.content) for m in label.conversation.messages],
        response_a=label.response_a,
        response_b=label.response_b,
        principle_ids=list(label.principle_ids),
        constitution_id=label.constitution.id,
        constitution_version=label.constitution.version,
        p_a=label.p_a,
        choice=as_enum(Choice, label.choice),
        confidence=label.confidence,
        swap_consistent=label.swap_consistent,
        status=STATUS_NAMES.get(label.status, "unspecified"),
        status_detail=label.status_detail,
    )


# -- accepted labels as export rows ----------------------------------------------------------------


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _source_name(source: int) -> str:
    return key(LabelSource(source)) if source in SOURCES.values() else "unknown"


def prompt_messages(label: label_pb2.PreferenceLabel) -> list[dict[str, str]]:
    """The conversation as TRL messages (a message without a known role counts as the user's)."""
    out = []
    for m in label.conversation.messages:
        role = role_name(m.role)
        role = role if role in ("system", "user", "assistant") else "user"
        out.append({"role": role, "content": m.content})
    return out


def record(a: review_pb2.AcceptedLabel) -> dict[str, Any]:
    """The full JSONL export record of an accepted label."""
    label = a.label
    return {
        "sequence": a.sequence,
        "label_id": label.id,
        "label_source": _source_name(a.source),
        "p_a": a.p_a,
        "choice": CHOICE_NAMES.get(a.choice, "unspecified"),
        "prompt": prompt_messages(label),
        "response_a": label.response_a,
        "response_b": label.response_b,
        "principle_ids": list(label.principle_ids),
        "ai": {
            "p_a": label.p_a,
            "choice": CHOICE_NAMES.get(label.choice, "unspecified"),
            "confidence": label.confidence,
            "swap_consistent": label.swap_consistent,
            "status": STATUS_NAMES[label.status],
            "chain_of_thought": label.chain_of_thought,
        },
        "human_decisions": [
            {
                "reviewer": d.reviewer,
                "choice": key(HumanChoice(d.choice)),
                "comment": d.comment,
                "decided_at": d.decided_at.ToJsonString(),
            }
            for d in a.human_decisions
        ],
        "constitution": _dict(label.constitution),
        "judge": _dict(label.judge),
        "provenance": _dict(label.provenance),
        "accepted_at": a.accepted_at.ToJsonString(),
    }


def preference_row(a: review_pb2.AcceptedLabel) -> dict[str, Any] | None:
    """The preference row (`charter.datasets.preference`) of an accepted label; None for a tie."""
    label = a.label
    return build_preference_row(
        prompt_messages(label),
        label.response_a,
        label.response_b,
        a.p_a,
        CHOICE_NAMES.get(a.choice, ""),
        label_source=_source_name(a.source),
        ai_p_a=label.p_a,
        human_reviewers=[d.reviewer for d in a.human_decisions],
        sequence=a.sequence,
        label_id=label.id,
        principle_ids=list(label.principle_ids),
        constitution_id=label.constitution.id,
        constitution_version=label.constitution.version,
        constitution_digest=label.constitution.digest,
        judge_model=label.judge.name,
        judge_engine=label.judge.engine,
        run_id=label.provenance.run_id,
    )


def export_rows(labels: Iterable[review_pb2.AcceptedLabel], fmt: str) -> Iterator[Row]:
    """(sequence, row) per label for a file in format `fmt` (`charter.review.export`): full records
    for `jsonl`, preference rows otherwise; row is None where the format leaves the label out."""
    check_format(fmt)
    rows = row_format(fmt)
    for a in labels:
        yield a.sequence, (record(a) if rows == "jsonl" else preference_row(a))

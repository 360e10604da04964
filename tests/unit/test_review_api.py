"""The review service's conversions (`charter.api.review`) and the preference row builder: domain
enums agree with the wire enums member by member, labels survive the ledger's opaque payload, and
the export rows keep their columns."""

from __future__ import annotations

import pytest
from charter.api import review as api
from charter.datasets.preference import preference_row
from charter.review.types import (
    AcceptedLabel,
    Choice,
    HumanChoice,
    HumanDecision,
    LabelSource,
    LabelStatus,
    Route,
    RouteReason,
)
from charter_proto.common.v1 import conversation_pb2, label_pb2
from charter_proto.review.v1 import review_pb2 as rv

PREFERENCE_COLUMNS = [
    "prompt", "chosen", "rejected", "p_chosen", "label_source", "ai_p_chosen", "human_reviewers", "sequence",
    "label_id", "principle_ids", "constitution_id", "constitution_version", "constitution_digest",
    "judge_model", "judge_engine", "run_id",
]  # fmt: skip
RECORD_FIELDS = [
    "sequence", "label_id", "label_source", "p_a", "choice", "prompt", "response_a", "response_b",
    "principle_ids", "ai", "human_decisions", "constitution", "judge", "provenance", "accepted_at",
]  # fmt: skip


@pytest.mark.parametrize(
    ("domain", "wire", "prefix"),
    [
        (Route, rv.Route, "ROUTE_"),
        (RouteReason, rv.RouteReason, "ROUTE_REASON_"),
        (HumanChoice, rv.HumanChoice, "HUMAN_CHOICE_"),
        (LabelSource, rv.LabelSource, "LABEL_SOURCE_"),
        (Choice, label_pb2.Choice, "CHOICE_"),
        (LabelStatus, label_pb2.LabelStatus, "LABEL_STATUS_"),
    ],
)
def test_domain_enums_are_the_wire_enums(domain, wire, prefix):
    assert {m.name: m.value for m in domain} == {k.removeprefix(prefix): v for k, v in wire.items()}


def judged(choice: int = label_pb2.CHOICE_A, p_a: float = 0.8) -> label_pb2.PreferenceLabel:
    label = label_pb2.PreferenceLabel(
        id="lbl-1",
        conversation=conversation_pb2.Conversation(
            messages=[
                conversation_pb2.Message(role=conversation_pb2.ROLE_SYSTEM, content="Be kind."),
                conversation_pb2.Message(role=conversation_pb2.ROLE_USER, content="Hi?"),
                conversation_pb2.Message(content="no role"),
            ]
        ),
        response_a="Hello!",
        response_b="Go away.",
        p_a=p_a,
        choice=choice,
        confidence=0.6,
        swap_consistent=True,
        principle_ids=["kind", "honest"],
        status=label_pb2.LABEL_STATUS_OK,
    )
    label.constitution.id, label.constitution.version, label.constitution.digest = "c", "2", "sha256:x"
    label.judge.name, label.judge.engine = "judge-model", "transformers"
    label.provenance.run_id = "run-7"
    return label


def test_submission_indexes_the_label_and_keeps_it_whole():
    label = judged()
    s = api.submission(label)
    assert (s.label_id, s.constitution_id, s.principle_ids) == ("lbl-1", "c", ("kind", "honest"))
    assert (s.p_a, s.choice, s.confidence, s.swap_consistent, s.status) == (
        0.8,
        Choice.A,
        0.6,
        True,
        LabelStatus.OK,
    )
    assert api.label_proto(s.payload) == label
    view = api.label_view(s.payload)
    assert view.conversation == [("system", "Be kind."), ("user", "Hi?"), ("unspecified", "no role")]
    assert (view.status, view.constitution_version, view.choice) == ("ok", "2", Choice.A)


def test_submission_carries_the_ensemble_disagreement_and_the_review_request():
    plain = api.submission(judged())
    assert (plain.ensemble_disagreement, plain.review_requested) == (None, False)  # unset: not measured
    label = judged()
    label.ensemble_disagreement, label.review_requested = 0.0, True  # measured: all members agree
    s = api.submission(label)
    assert (s.ensemble_disagreement, s.review_requested) == (0.0, True)
    label.ensemble_disagreement = 2 / 3
    s = api.submission(label)
    assert s.ensemble_disagreement == pytest.approx(2 / 3)
    back = api.label_proto(s.payload)
    assert back == label and back.HasField("ensemble_disagreement") and back.review_requested


def test_a_human_decision_overrides_in_the_export_rows():
    label = judged(p_a=0.8)  # the AI preferred A
    decision = HumanDecision("lbl-1", "ann", HumanChoice.B, "B is better", 1_800_000_000.5)
    accepted = AcceptedLabel(
        7, "lbl-1", LabelSource.HUMAN, 0.0, Choice.B, 1_800_000_001.0, label.SerializeToString(), (decision,)
    )
    message = api.accepted_proto(accepted)
    assert message.label == label and message.human_decisions[0].choice == rv.HUMAN_CHOICE_B
    row = api.preference_row(message)
    assert list(row) == PREFERENCE_COLUMNS
    assert row["prompt"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi?"},
        {"role": "user", "content": "no role"},  # a message without a role counts as the user's
    ]
    assert row["chosen"] == [{"role": "assistant", "content": "Go away."}]
    assert (row["p_chosen"], row["ai_p_chosen"]) == (1.0, pytest.approx(0.2))
    assert (row["label_source"], row["human_reviewers"], row["sequence"], row["run_id"]) == (
        "human",
        ["ann"],
        7,
        "run-7",
    )
    record = api.record(message)
    assert list(record) == RECORD_FIELDS
    assert (record["choice"], record["ai"]["choice"], record["ai"]["status"]) == ("B", "A", "ok")
    assert record["human_decisions"][0]["choice"] == "b"
    assert record["constitution"] == {"id": "c", "version": "2", "digest": "sha256:x"}
    assert [r for _, r in api.export_rows([message], "parquet")] == [row]


def test_a_tie_has_no_preference_row_but_a_record():
    message = api.accepted_proto(
        AcceptedLabel(
            3,
            "lbl-1",
            LabelSource.AI,
            0.5,
            Choice.TIE,
            0.0,
            judged(label_pb2.CHOICE_TIE, 0.5).SerializeToString(),
        )
    )
    assert api.preference_row(message) is None
    assert [(s, r["choice"]) for s, r in api.export_rows([message], "jsonl")] == [(3, "tie")]


def test_preference_row_takes_plain_values_and_orders_its_columns():
    row = preference_row(
        [{"role": "user", "content": "q"}], "a", "b", 0.3, "B", judge_model="m", label_id="x", key="k"
    )
    assert row == {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "b"}],
        "rejected": [{"role": "assistant", "content": "a"}],
        "p_chosen": pytest.approx(0.7),
        "label_id": "x",
        "judge_model": "m",
        "key": "k",
    }
    assert list(row) == ["prompt", "chosen", "rejected", "p_chosen", "label_id", "judge_model", "key"]
    assert preference_row([], "a", "b", 0.5, "tie") is None

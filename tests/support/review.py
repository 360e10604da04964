"""Review-ledger helpers for tests: a fresh PostgreSQL database per test, and judged labels built from
the shared hh-rlhf pairs."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from charter_proto.common.v1 import conversation_pb2, label_pb2

from tests.support.hh import Pair, load_pairs

# the machine's PostgreSQL (trust auth); .ci/run makes sure it is running
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards. Fails (never skips) when the
    server is not reachable."""
    import psycopg

    name = f"charter_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable ({err}); `make test` starts it")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_ROLES = {"Human": conversation_pb2.ROLE_USER, "Assistant": conversation_pb2.ROLE_ASSISTANT}


def hh_conversation(prefix: str) -> conversation_pb2.Conversation:
    """An hh-rlhf transcript ("\n\nHuman: …\n\nAssistant: …") as a Conversation."""
    parts = re.split(r"\n\n(Human|Assistant): ?", "\n\n" + prefix.strip())
    return conversation_pb2.Conversation(
        messages=[
            conversation_pb2.Message(role=_ROLES[speaker], content=text.strip())
            for speaker, text in zip(parts[1::2], parts[2::2], strict=True)
        ]
    )


def hh_label(
    pair: Pair,
    index: int,
    *,
    confidence: float,
    a_wins: bool = True,
    swap_consistent: bool = True,
    status: int = label_pb2.LABEL_STATUS_OK,
    principle: str = "violence",
    constitution: str = "harmless",
    label_id: str | None = None,
) -> label_pb2.PreferenceLabel:
    """A judged label over a real pair: A is the human-chosen response."""
    p_a = 0.5 + confidence / 2 if a_wins else 0.5 - confidence / 2
    label = label_pb2.PreferenceLabel(
        id=label_id or f"lbl-{index:06d}",
        conversation=hh_conversation(pair.prefix),
        response_a=pair.chosen,
        response_b=pair.rejected,
        p_a=p_a,
        choice=label_pb2.CHOICE_A if p_a > 0.5 else label_pb2.CHOICE_B if p_a < 0.5 else label_pb2.CHOICE_TIE,
        confidence=confidence,
        swap_consistent=swap_consistent,
        principle_ids=[principle],
        status=status,
    )
    label.constitution.id = constitution
    label.constitution.version = "1"
    label.constitution.digest = "sha256:" + "0" * 64
    label.judge.name = "SmolLM2-135M-Instruct"
    label.judge.engine = "transformers"
    label.provenance.run_id = "test-run"
    return label


def hh_labels(n: int, confidence: float, **kwargs: object) -> list[label_pb2.PreferenceLabel]:
    pairs = load_pairs(min(n, 200))
    return [hh_label(pairs[i % len(pairs)], i, confidence=confidence, **kwargs) for i in range(n)]  # type: ignore[arg-type]


def submit(ledger: Any, labels: list[label_pb2.PreferenceLabel]) -> list[Any]:
    """`Ledger.submit` with labels as messages (what the servicer does)."""
    from charter.api.review import submissions

    return ledger.submit(submissions(labels))


def ledger_with_overrides(url: str) -> list[label_pb2.PreferenceLabel]:
    """A ledger at `url` with eight hh-rlhf labels: six auto-accepted (the AI's confident choice) and
    two routed to people, who decide one as B (overriding the AI's A) and tie the other. Returns the
    labels as submitted."""
    from charter.core.settings import RoutingSettings
    from charter.review.store import Ledger
    from charter_proto.review.v1 import review_pb2 as rv

    ledger = Ledger(url, RoutingSettings(audit_rate=0.0))
    labels = hh_labels(8, confidence=0.9)
    labels[6].confidence = labels[7].confidence = 0.1
    submit(ledger, labels)
    for choice in (rv.HUMAN_CHOICE_B, rv.HUMAN_CHOICE_TIE):
        item = ledger.claim("alice").item
        ledger.decide("alice", item.item_id, item.lease_id, choice, "checked by hand")
    ledger.close()
    return labels

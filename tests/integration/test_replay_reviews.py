"""scripts/replay_reviews.py: the review queue decided by the pairs' own human labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from charter.core.settings import RoutingSettings
from charter.review.store import Ledger
from charter_proto.common.v1 import label_pb2

from tests.support import ROOT, subprocess_env
from tests.support.review import hh_labels, submit

pytestmark = pytest.mark.integration


def test_queued_labels_are_decided_by_the_source_preference(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'review.db'}"
    labels = hh_labels(6, confidence=0.1)  # all below accept_confidence: queued for people
    ledger = Ledger(url, RoutingSettings(audit_rate=0.0))
    submit(ledger, labels)
    ledger.close()
    records = tmp_path / "records.jsonl"
    prefs = {labels[0].id: "A", labels[1].id: "B", labels[2].id: "B", labels[3].id: "A", labels[4].id: "A"}
    records.write_text(
        "".join(json.dumps({"label": {"id": i}, "source_preference": p}) + "\n" for i, p in prefs.items())
    )
    done = subprocess.run(
        [sys.executable, "scripts/replay_reviews.py", "--database", url, "--records", str(records)],
        cwd=ROOT, capture_output=True, text=True, env=subprocess_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "decided 5 items (3 A, 2 B) as hh-rlhf-annotators; 1 without a human label handed back" in done.stdout
    )
    ledger = Ledger(url, RoutingSettings(audit_rate=0.0))
    page = ledger.accepted_after(0, None, 100)
    ledger.close()
    choices = {a.label_id: a.choice for a in page.labels}
    expected = {i: label_pb2.CHOICE_A if p == "A" else label_pb2.CHOICE_B for i, p in prefs.items()}
    assert choices == expected  # the human decision, not the AI's, and the unlabelled one still queued

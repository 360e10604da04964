"""Decide the review queue with the human preferences a pair source already carries — e.g. hh-rlhf's
own annotators — as one reviewer: a stand-in for people on the review page when the pairs come with
human labels (the end-to-end loop, scripts/loop.sh), and a way to seed agreement statistics.

    python scripts/replay_reviews.py --database sqlite:///out/loop/review.db \\
        --records out/loop/rl-cai/records.jsonl --reviewer hh-rlhf-annotators

Each queued item whose label came from an RL-CAI record with a `source_preference` (A or B) is
decided that way; items without one are handed back untouched. Prints what it decided.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from charter.core.settings import load_settings
from charter.review.store import Ledger
from charter.review.types import HumanChoice

CHOICES = {"A": HumanChoice.A, "B": HumanChoice.B}


def human_choices(records: Path) -> dict[str, str]:
    """label id → the source's human preference, from an RL-CAI `records.jsonl`."""
    out = {}
    with open(records, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            label_id = (record.get("label") or {}).get("id")
            if label_id and record.get("source_preference") in CHOICES:
                out[label_id] = record["source_preference"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="the ledger (SQLAlchemy URL)")
    parser.add_argument("--records", required=True, type=Path, help="RL-CAI records.jsonl")
    parser.add_argument("--reviewer", default="hh-rlhf-annotators")
    parser.add_argument("--config", "-c", help="settings file (review.routing)")
    args = parser.parse_args()
    choices = human_choices(args.records)
    settings = load_settings(args.config)
    ledger = Ledger(args.database, settings.review.routing)
    decided = {"A": 0, "B": 0}
    handed_back = []
    try:
        while True:
            item = ledger.claim(args.reviewer).item
            if item is None or item.item_id in handed_back:
                break
            choice = choices.get(item.item_id)
            if choice is None:
                ledger.release(args.reviewer, item.item_id, item.lease_id)
                handed_back.append(item.item_id)
                continue
            ledger.decide(args.reviewer, item.item_id, item.lease_id, CHOICES[choice], "source human label")
            decided[choice] += 1
    finally:
        ledger.close()
    print(
        f"decided {sum(decided.values())} items ({decided['A']} A, {decided['B']} B) as {args.reviewer}; "
        f"{len(handed_back)} without a human label handed back"
    )


if __name__ == "__main__":
    main()

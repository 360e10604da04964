"""Reading the shared hh-rlhf file for tests (the pipelines have their own loader)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

from tests.support import SHARED_DATA

HH_DEV = SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"


@dataclass(frozen=True)
class Pair:
    prefix: str
    chosen: str
    rejected: str

    @property
    def first_human_turn(self) -> str:
        return self.prefix.removeprefix("Human:").split("\n\nAssistant:", 1)[0].strip()


def load_pairs(limit: int) -> list[Pair]:
    pairs = []
    with gzip.open(HH_DEV, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            cut = record["chosen"].rfind("\n\nAssistant:")
            prefix = record["chosen"][:cut]
            if record["rejected"][:cut] != prefix:
                continue
            start = cut + len("\n\nAssistant:")
            pairs.append(
                Pair(prefix.strip(), record["chosen"][start:].strip(), record["rejected"][start:].strip())
            )
            if len(pairs) == limit:
                break
    return pairs

"""Weighted, seeded principle sampling.

The draw for an item depends only on (seed, item key, round, attempt), never on what else is in the
batch or the order items finish in, so a resumed or re-sharded run samples the same principles.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from charter.constitution.schema import Constitution, Principle
from charter.core.errors import InvalidArgument


def rng_for(seed: int, *key: object) -> random.Random:
    """A generator seeded from text: `random.Random(str)` hashes it with SHA-512 — stable across runs."""
    return random.Random(":".join(str(k) for k in (seed, *key)))


def eligible(constitution: Constitution, principle_ids: Sequence[str] = ()) -> list[Principle]:
    if not principle_ids:
        return list(constitution.principles)
    known = {p.id for p in constitution.principles}
    unknown = [pid for pid in principle_ids if pid not in known]
    if unknown:
        raise InvalidArgument(
            f"principle ids {unknown} are not in constitution {constitution.id!r} "
            f"(it has: {', '.join(sorted(known))})",
            field="principle_ids",
            value=unknown,
        )
    return [p for p in constitution.principles if p.id in set(principle_ids)]


def sample(
    principles: Sequence[Principle], k: int, rng: random.Random, exclude: Sequence[str] = ()
) -> list[Principle]:
    """`k` distinct principles drawn by weight without replacement; `exclude` is avoided while
    anything else is left (a retry wants a *different* principle, but a one-principle constitution
    can only offer the same one)."""
    pool = [p for p in principles if p.id not in set(exclude)] or list(principles)
    chosen: list[Principle] = []
    for _ in range(min(k, len(pool))):
        total = sum(p.weight for p in pool)
        x = rng.random() * total
        for i, p in enumerate(pool):
            x -= p.weight
            if x < 0 or i == len(pool) - 1:
                chosen.append(pool.pop(i))
                break
    return chosen

"""Agreement between raters: raw agreement and Cohen's kappa over paired categorical decisions. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Agreement:
    pairs: int
    agreement: float
    """Fraction of pairs where both raters chose the same category."""
    kappa: float
    """Cohen's kappa: agreement beyond what the raters' own category rates give by chance.
    0 with no pairs; 1 when both always agree, even on one category only."""


def cohen_kappa(pairs: Iterable[tuple[object, object]]) -> Agreement:
    pairs = list(pairs)
    n = len(pairs)
    if n == 0:
        return Agreement(0, 0.0, 0.0)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    chance = sum(first[k] * second[k] for k in first) / (n * n)
    if chance >= 1.0:  # both raters used one and the same category throughout
        return Agreement(n, observed, 1.0 if observed == 1.0 else 0.0)
    return Agreement(n, observed, (observed - chance) / (1.0 - chance))

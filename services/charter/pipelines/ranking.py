"""How best-of-N ranks one prompt's samples (pure): the candidates, the judge's round-robin scores, and
the choice of best and worst.

The candidates are the distinct non-empty samples: an empty sample is never chosen, and a repeated
text is scored once and stands for its copies. Equal scores go to the lowest sample index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SCORED = ("ok", "tie")
"""Judge label statuses whose p_a counts in a tournament."""


def candidates(texts: Sequence[str]) -> dict[int, int]:
    """Sample index -> the index of the candidate that stands for it: itself for the first copy of a
    non-empty text, the first copy for a repeat; empty samples are left out."""
    first: dict[str, int] = {}
    out: dict[int, int] = {}
    for i, text in enumerate(texts):
        if text.strip():
            out[i] = first.setdefault(text.strip(), i)
    return out


def tournament_scores(indices: Sequence[int], comparisons: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Each candidate's mean probability of beating the others, from round-robin comparisons
    (`a`, `b`: sample indices, `p_a`: P(a beats b), `status`); an unscored comparison counts 0.5."""
    wins = {i: 0.0 for i in indices}
    for c in comparisons:
        p = float(c["p_a"]) if c["status"] in SCORED else 0.5
        wins[c["a"]] += p
        wins[c["b"]] += 1.0 - p
    opponents = len(indices) - 1
    return {i: (w / opponents if opponents else 0.0) for i, w in wins.items()}


def select(scores: Mapping[int, float]) -> tuple[str, int | None, int | None]:
    """(status, best, worst) over the candidates' scores: `ok` with both, `tie` (all scores equal) and
    `single` (one candidate) with the best only, `empty` with neither. Equal scores go to the lowest
    index."""
    if not scores:
        return "empty", None, None
    order = sorted(scores)
    best = max(order, key=lambda i: scores[i])
    worst = min(order, key=lambda i: scores[i])
    if len(order) == 1:
        return "single", best, None
    if scores[best] == scores[worst]:
        return "tie", best, None
    return "ok", best, worst


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

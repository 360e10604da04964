"""The statistics of policy evaluation — pure functions over plain numbers (no models, no I/O).

- `mean_ci`: a mean with a seeded percentile-bootstrap 95% interval;
- `win_rate`: wins + ½ ties over the decided comparisons, with a bootstrap interval over items;
- `bradley_terry`: the maximum-likelihood Bradley–Terry strengths of several models from pairwise
  outcomes (ties count half to each side), by the MM algorithm of Hunter (2004), shown on the Elo scale
  (400 · log10 odds, anchored so that the reference model is 1000), with bootstrap intervals from
  resampling the *items* (every comparison of a prompt moves together, as they are not independent);
- `length_matched`: the comparisons whose two responses have nearly the same length.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054
ELO_SCALE = 400.0 / math.log(10.0)
ELO_ANCHOR = 1000.0


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (q in [0, 1])."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap(
    n: int, statistic: Callable[[list[int]], float], *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of `statistic(indices)` over `resamples` draws of n indices with
    replacement (a draw whose statistic is not finite is skipped)."""
    if n == 0:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        value = statistic([rng.randrange(n) for _ in range(n)])
        if math.isfinite(value):
            values.append(value)
    values.sort()
    return (_percentile(values, 0.025), _percentile(values, 0.975))


def mean_ci(values: Sequence[float], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """{"mean", "ci": [lo, hi], "n", "std"} of `values` (bootstrap percentile interval)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci": [None, None], "n": 0, "std": None}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    lo, hi = bootstrap(n, lambda idx: sum(values[i] for i in idx) / n, resamples=resamples, seed=seed)
    return {"mean": mean, "ci": [lo, hi], "n": n, "std": std}


def win_rate(outcomes: Sequence[float], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win rate of outcomes 1 (win), 0.5 (tie), 0 (loss): {"rate", "ci", "n", "wins", "ties", "losses"}."""
    n = len(outcomes)
    wins = sum(1 for o in outcomes if o == 1.0)
    ties = sum(1 for o in outcomes if o == 0.5)
    out: dict[str, Any] = {"n": n, "wins": wins, "ties": ties, "losses": n - wins - ties}
    if n == 0:
        return {**out, "rate": None, "ci": [None, None]}
    lo, hi = bootstrap(n, lambda idx: sum(outcomes[i] for i in idx) / n, resamples=resamples, seed=seed)
    return {**out, "rate": sum(outcomes) / n, "ci": [lo, hi]}


@dataclass(frozen=True)
class Comparison:
    """One judged comparison of two models on one item: `score` is 1 if `a` won, 0.5 a tie, 0 if `b` won."""

    item: str
    a: str
    b: str
    score: float


def bt_strengths(
    models: Sequence[str], comparisons: Sequence[Comparison], *, iterations: int = 2000, tol: float = 1e-10
) -> dict[str, float]:
    """Bradley–Terry log-strengths (natural log, mean 0) by Hunter's MM updates; P(i beats j) =
    σ(s_i − s_j). A tie is half a win to each side. A tiny prior (half a tie against every other model)
    keeps strengths finite when a model won or lost every comparison."""
    index = {m: i for i, m in enumerate(models)}
    k = len(models)
    wins = [0.0] * k
    games = [[0.0] * k for _ in range(k)]
    for c in comparisons:
        i, j = index[c.a], index[c.b]
        wins[i] += c.score
        wins[j] += 1.0 - c.score
        games[i][j] += 1.0
        games[j][i] += 1.0
    prior = 0.5 / max(k - 1, 1)
    for i in range(k):
        for j in range(k):
            if i != j:
                games[i][j] += 2 * prior
        wins[i] += prior * (k - 1)
    p = [1.0] * k
    for _ in range(iterations):
        new = []
        for i in range(k):
            denom = sum(games[i][j] / (p[i] + p[j]) for j in range(k) if j != i and games[i][j])
            new.append(wins[i] / denom if denom else p[i])
        total = math.exp(sum(math.log(x) for x in new) / k)
        new = [x / total for x in new]
        change = max(abs(math.log(a) - math.log(b)) for a, b in zip(new, p, strict=True))
        p = new
        if change < tol:
            break
    return {m: math.log(p[index[m]]) for m in models}


def elo(strengths: dict[str, float], anchor: str) -> dict[str, float]:
    """Log-strengths on the Elo scale, `anchor` at 1000."""
    base = strengths[anchor]
    return {m: ELO_ANCHOR + ELO_SCALE * (s - base) for m, s in strengths.items()}


def bradley_terry(
    models: Sequence[str],
    comparisons: Sequence[Comparison],
    *,
    anchor: str,
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Each model's Elo (anchor = 1000) with a 95% interval from resampling items, and its
    Bradley–Terry probability of beating the anchor."""
    point = elo(bt_strengths(models, comparisons), anchor)
    by_item: dict[str, list[Comparison]] = {}
    for c in comparisons:
        by_item.setdefault(c.item, []).append(c)
    items = list(by_item)
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(resamples if items else 0):
        sample = [c for _ in items for c in by_item[items[rng.randrange(len(items))]]]
        for m, value in elo(bt_strengths(models, sample, iterations=500, tol=1e-8), anchor).items():
            draws[m].append(value)
    out = {}
    for m in models:
        values = sorted(draws[m])
        ci = [_percentile(values, 0.025), _percentile(values, 0.975)] if values else [None, None]
        p_beat = 1.0 / (1.0 + 10 ** (-(point[m] - ELO_ANCHOR) / 400.0))
        out[m] = {"elo": point[m], "ci": ci, "p_beats_anchor": p_beat}
    return out


def length_matched(lengths: Sequence[tuple[int, int]], *, tolerance: float = 0.1) -> list[int]:
    """Indices of comparisons whose two lengths differ by at most `tolerance` of the longer one."""
    out = []
    for i, (a, b) in enumerate(lengths):
        longer = max(a, b)
        if longer == 0 or abs(a - b) <= tolerance * longer:
            out.append(i)
    return out

"""The reward-hacking watch's divergence rule: plain numbers in, a verdict out (no models, no files).

A run scores a fixed probe set every few steps with the proxy (the reward model it trains on) and a
gold scorer. `DivergenceDetector` is fed each check's mean scores, in step order, and says when the
proxy has kept rising while gold fell:

- the **best-gold check** `b` is the check with the highest gold so far (the earliest, on ties);
- a later check `k` is **diverging** when ``proxy_k > proxy_b + min_delta`` and
  ``gold_k < gold_b - min_delta`` — the proxy says the policy improved since `b`, gold says it got
  worse;
- the detector **fires** at the check where `patience` consecutive checks have been diverging. A
  check that is not diverging (a new best gold among them) ends the streak; a streak that goes on
  past `patience` does not fire again, a new streak may.

Comparing against the best-gold check rather than the previous check keeps one noisy check from
starting or breaking a streak by itself; `min_delta` (in each scorer's own units) sets how large a
move counts. Curves that rise together keep setting new gold bests and never fire.

Example::

    detector = DivergenceDetector(patience=2, min_delta=0.05)
    for step, proxy, gold in [(0, 0.1, 0.50), (10, 0.4, 0.55), (20, 0.8, 0.45), (30, 1.2, 0.40)]:
        verdict = detector.add(step, proxy, gold)
    verdict.fired, verdict.best.step  # (True, 10)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One check's mean scores over the probe set."""

    step: int
    proxy: float
    gold: float


@dataclass(frozen=True)
class Verdict:
    check: Check
    best: Check
    """The best-gold check so far (this one, if it set a new best)."""
    diverging: bool
    streak: int
    """Consecutive diverging checks ending at this one."""
    fired: bool
    """This check completed `patience` diverging checks in a row."""


class DivergenceDetector:
    """Feeds on (step, proxy, gold) checks in step order; see the module docstring for the rule."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1 ({patience=})")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0 ({min_delta=})")
        self.patience, self.min_delta = patience, min_delta
        self.checks: list[Check] = []
        self.best: Check | None = None
        self.streak = 0

    def add(self, step: int, proxy: float, gold: float) -> Verdict:
        """Record one check; its verdict."""
        if not (math.isfinite(proxy) and math.isfinite(gold)):
            raise ValueError(f"scores must be finite ({step=}, {proxy=}, {gold=})")
        if self.checks and step <= self.checks[-1].step:
            raise ValueError(f"checks come in step order ({step=} after step {self.checks[-1].step})")
        check = Check(step, proxy, gold)
        self.checks.append(check)
        best = self.best
        if best is None or gold > best.gold:
            self.best, self.streak = check, 0
            return Verdict(check, check, diverging=False, streak=0, fired=False)
        diverging = proxy > best.proxy + self.min_delta and gold < best.gold - self.min_delta
        self.streak = self.streak + 1 if diverging else 0
        return Verdict(check, best, diverging, self.streak, fired=self.streak == self.patience)

    @property
    def diverged(self) -> bool:
        """The current streak has reached `patience` (it fired, and nothing has ended it since)."""
        return self.streak >= self.patience

"""Label math: per-order option probabilities -> one debiased, principle-averaged soft label.

Pure: no engine, no protobuf. Each principle's prompt is scored in both presentation orders; the
probability that response A is preferred is read from each order (`p_first`, or `1 - p_first` when
B was shown first), clamped in chain-of-thought mode, averaged over the two orders (position
debiasing, RLAIF §2.1.1) and then over the principles (CAI ensembling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Choice = Literal["A", "B", "TIE"]
Status = Literal["ok", "tie", "unscorable"]


@dataclass(frozen=True)
class OrderOutcome:
    """One scored prompt: one principle, one presentation order."""

    principle_id: str
    swapped: bool
    """True when response B was shown in position (A)."""
    p_first: float | None
    """Normalised probability that the response shown first is preferred; None = unscorable."""
    logprobs: tuple[float, ...] = ()
    rationale: str = ""
    detail: str = ""
    """Why the order could not be scored."""
    prior_first: float | None = None
    """Calibrated method: the principle's content-free prior for the first slot (p_first is corrected)."""

    @property
    def p_a(self) -> float | None:
        if self.p_first is None:
            return None
        return 1.0 - self.p_first if self.swapped else self.p_first


@dataclass(frozen=True)
class Verdict:
    p_a: float
    choice: Choice
    confidence: float
    """|p_a - 0.5| * 2."""
    swap_consistent: bool
    """Every principle was scored in both orders and both preferred the same response."""
    status: Status
    principle_ids: tuple[str, ...]
    """The principles that contributed (in first-seen order)."""
    detail: str = ""


def clamp(p: float, low: float, high: float) -> float:
    return min(max(p, low), high)


def check_clamp(low: float, high: float) -> None:
    if not (0.0 <= low < 0.5 < high <= 1.0):
        raise ValueError(f"clamp range [{low}, {high}] must satisfy 0 <= low < 0.5 < high <= 1")


def rescale(p: float, scale: float) -> float:
    """p on the logit scale multiplied by `scale` (Platt scaling without intercept): 1 leaves p as it
    is, below 1 pulls it toward 0.5, above 1 pushes it out. The side of 0.5 never changes."""
    if scale == 1.0 or p in (0.0, 1.0) or p == 0.5:
        return p
    z = scale * math.log(p / (1.0 - p))
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def side(p: float) -> int:
    """+1 prefers A, -1 prefers B, 0 neither."""
    return (p > 0.5) - (p < 0.5)


def choose(p_a: float, tie_margin: float) -> Choice:
    if abs(p_a - 0.5) <= tie_margin:
        return "TIE"
    return "A" if p_a > 0.5 else "B"


def combine(
    orders: Sequence[OrderOutcome],
    *,
    tie_margin: float = 0.0,
    clamp_range: tuple[float, float] | None = None,
    logit_scale: float = 1.0,
) -> Verdict:
    """Debias over orders, average over principles, rescale (`rescale`, a fitted calibration), decide.

    A principle contributes only when every order asked for it was scored (averaging one order of a
    two-order principle would bring back the position bias it is there to remove). No principle left
    -> `unscorable`, with p_a = 0.5 and the reasons in `detail`.
    """
    by_principle: dict[str, list[OrderOutcome]] = {}
    for o in orders:
        by_principle.setdefault(o.principle_id, []).append(o)
    means: list[float] = []
    used: list[str] = []
    consistent = True
    problems: list[str] = []
    for pid, group in by_principle.items():
        values = [o.p_a for o in group]
        if any(v is None or not math.isfinite(v) for v in values):
            problems.extend(f"{pid}{' (swapped)' if o.swapped else ''}: {o.detail or 'not scored'}"
                            for o in group if o.p_a is None or not math.isfinite(o.p_a))  # fmt: skip
            continue
        ps = [v for v in values if v is not None]
        if clamp_range is not None:
            ps = [clamp(p, *clamp_range) for p in ps]
        means.append(sum(ps) / len(ps))
        used.append(pid)
        sides = {side(p) for p in ps}
        if len({o.swapped for o in group}) < 2 or len(sides) != 1 or 0 in sides:
            consistent = False
    if not means:
        return Verdict(0.5, "TIE", 0.0, False, "unscorable", (), "; ".join(problems) or "nothing scored")
    p_a = rescale(sum(means) / len(means), logit_scale)
    choice = choose(p_a, tie_margin)
    detail = ("dropped " + "; ".join(problems)) if problems else ""
    return Verdict(
        p_a=p_a,
        choice=choice,
        confidence=abs(p_a - 0.5) * 2.0,
        swap_consistent=consistent,
        status="tie" if choice == "TIE" else "ok",
        principle_ids=tuple(used),
        detail=detail,
    )

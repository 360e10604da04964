"""Judge-vs-human evaluation figures: agreement, position bias, calibration, per principle.

Pure and stdlib-only: a sequence of `EvalRecord` (one per human-labelled pair) in, one JSON-ready
dict out (`summarise`), plus a fixed-width text rendering of it (`format_table`).

Conventions:

* hard choice: A when p_a > 0.5, B when p_a < 0.5, none at exactly 0.5.
* `agreement` is over ALL records: a record agrees only when its status is "ok" and its hard
  choice equals the human's; ties, unscored and failed records count as disagreement.
* `agreement_scored` is over scored records (p_a present, status "ok" or "tie") with a tie (status
  "tie", or p_a exactly 0.5) earning 0.5 credit — the expected agreement of a coin flip.
* `per_principle` counts a record toward every id in its `principle_ids` (the principles that
  contributed); a record with none (unscorable, error) counts toward no principle.
* undefined figures (nothing to average) are None.

Example::

    records = [EvalRecord("A", 0.8, "ok", True, ("harmless",), ())]
    print(format_table(summarise(records, seconds=2.0)))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STATUSES = ("ok", "tie", "unscorable", "error", "invalid_input")
SCORED_STATUSES = ("ok", "tie")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class OrderProb:
    """One presentation order of one principle's prompt."""

    principle_id: str
    swapped: bool
    """True when response B was shown first."""
    p_first: float
    """Normalised probability that the response shown first is preferred."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.p_first) and 0.0 <= self.p_first <= 1.0):
            raise ValueError(f"{self.p_first=} must be a probability in [0, 1]")

    @property
    def p_a(self) -> float:
        return 1.0 - self.p_first if self.swapped else self.p_first


@dataclass(frozen=True)
class EvalRecord:
    """The judge's label for one human-labelled pair."""

    human: str
    """"A" or "B": the response the human preferred."""
    p_a: float | None
    """Judge's probability that A is preferred; None when the label has no score."""
    status: str
    swap_consistent: bool
    principle_ids: tuple[str, ...]
    orders: tuple[OrderProb, ...] = ()

    def __post_init__(self) -> None:
        if self.human not in ("A", "B"):
            raise ValueError(f"{self.human=} must be 'A' or 'B'")
        if self.status not in STATUSES:
            raise ValueError(f"{self.status=} must be one of {STATUSES}")
        if self.p_a is not None and not (math.isfinite(self.p_a) and 0.0 <= self.p_a <= 1.0):
            raise ValueError(f"{self.p_a=} must be None or a probability in [0, 1]")

    @property
    def scored(self) -> bool:
        return self.p_a is not None and self.status in SCORED_STATUSES

    @property
    def agrees(self) -> bool:
        """Status ok and the hard choice is the human's (ties and unscored disagree)."""
        return self.status == "ok" and self.p_a is not None and hard_choice(self.p_a) == self.human

    @property
    def p_human(self) -> float | None:
        """The judge's probability for the human's choice."""
        if self.p_a is None:
            return None
        return self.p_a if self.human == "A" else 1.0 - self.p_a


def hard_choice(p_a: float) -> str | None:
    """ "A" above 0.5, "B" below, None at exactly 0.5."""
    if p_a > 0.5:
        return "A"
    if p_a < 0.5:
        return "B"
    return None


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes=} {n=}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate(hits: float, n: int) -> float | None:
    return hits / n if n else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _proportion(hits: int, n: int) -> dict[str, Any]:
    return {"value": _rate(hits, n), "ci95": list(wilson(hits, n))}


def shorter_reply(pairs: Sequence[tuple[str, str, str | None]]) -> dict[str, Any]:
    """A no-model baseline: choose the shorter reply (characters; equal length counts half). Each item is
    (response_a, response_b, human choice). On hh-rlhf harmless data the less harmful reply is often
    the shorter one, so a judge must beat this, not 50%, to show it reads the replies."""
    hits = ties = n = 0
    for a, b, human in pairs:
        if human is None:
            continue
        n += 1
        if len(a) == len(b):
            ties += 1
        elif ("A" if len(a) < len(b) else "B") == human:
            hits += 1
    # a tie is a coin flip: half credit, and the interval counts it as half a success (rounded down)
    return {
        "agreement": _rate(hits + ties / 2, n),
        "agreement_ci95": list(wilson(hits + ties // 2, n)),
        "pairs": n,
        "equal_length": ties,
    }


def picks_shorter(items: Sequence[tuple[str, str, float | None]]) -> dict[str, Any]:
    """How often a judge's hard choice is the shorter reply: each item is (response_a, response_b, p_a);
    pairs of equal length and labels without a side (no p_a, or exactly 0.5) are left out. Near 1 (or 0)
    means the labels follow length whatever the principle."""
    hits = n = 0
    for a, b, p_a in items:
        if p_a is None or p_a == 0.5 or len(a) == len(b):
            continue
        n += 1
        hits += (p_a > 0.5) == (len(a) < len(b))
    return {"rate": _rate(hits, n), "ci95": list(wilson(hits, n)), "labels": n}


def _side(p: float) -> int:
    return (p > 0.5) - (p < 0.5)


def _position(records: Sequence[EvalRecord]) -> dict[str, Any]:
    """Position bias over (record, principle) pairs scored in both orders, and over single orders."""
    pairs = consistent = same_position = 0
    orders = first_wins = 0
    for record in records:
        firsts: dict[str, dict[bool, float]] = {}
        for order in record.orders:
            orders += 1
            first_wins += order.p_first > 0.5
            firsts.setdefault(order.principle_id, {}).setdefault(order.swapped, order.p_first)
        for by_swap in firsts.values():
            if len(by_swap) < 2:
                continue
            pairs += 1
            plain, swapped = by_swap[False], by_swap[True]
            if _side(plain) != 0 and _side(plain) == _side(1.0 - swapped):
                consistent += 1
            if _side(plain) != 0 and _side(plain) == _side(swapped):
                same_position += 1
    return {
        "position_pairs": pairs,
        "position_consistency": _rate(consistent, pairs),
        "same_position_rate": _rate(same_position, pairs),
        "orders": orders,
        "first_position_rate": _rate(first_wins, orders),
    }


def _calibration(records: Sequence[EvalRecord], bins: int) -> dict[str, Any]:
    """ECE and reliability bins over decided records (status ok, p_a != 0.5)."""
    width = 0.5 / bins
    conf_sums = [0.0] * bins
    correct = [0] * bins
    counts = [0] * bins
    for r in records:
        if r.status != "ok" or r.p_a is None or hard_choice(r.p_a) is None:
            continue
        conf = max(r.p_a, 1.0 - r.p_a)
        i = min(int((conf - 0.5) * 2 * bins), bins - 1)
        counts[i] += 1
        conf_sums[i] += conf
        correct[i] += hard_choice(r.p_a) == r.human
    total = sum(counts)
    reliability = []
    ece = 0.0
    for i in range(bins):
        mean_conf = conf_sums[i] / counts[i] if counts[i] else None
        acc = correct[i] / counts[i] if counts[i] else None
        if mean_conf is not None and acc is not None:
            ece += counts[i] / total * abs(acc - mean_conf)
        reliability.append(
            {
                "low": 0.5 + i * width,
                "high": 0.5 + (i + 1) * width,
                "count": counts[i],
                "mean_confidence": mean_conf,
                "accuracy": acc,
            }
        )
    scored = [r for r in records if r.scored]
    p_human = [r.p_human for r in scored if r.p_human is not None]
    return {
        "ece": ece if total else None,
        "ece_count": total,
        "reliability": reliability,
        "brier": _mean([(1.0 - p) ** 2 for p in p_human]),
        "mean_p_human": _mean(p_human),
    }


def _credit(record: EvalRecord) -> float:
    """Agreement credit of a scored record: 1 agrees, 0.5 tie, 0 disagrees."""
    if record.agrees:
        return 1.0
    if record.status == "tie" or record.p_a is None or hard_choice(record.p_a) is None:
        return 0.5
    return 0.0


def _per_principle(records: Sequence[EvalRecord]) -> dict[str, dict[str, Any]]:
    counts: dict[str, int] = {}
    hits: dict[str, int] = {}
    for r in records:
        for pid in dict.fromkeys(r.principle_ids):
            counts[pid] = counts.get(pid, 0) + 1
            hits[pid] = hits.get(pid, 0) + r.agrees
    return {
        pid: {
            "count": counts[pid],
            "agreement": hits[pid] / counts[pid],
            "ci95": list(wilson(hits[pid], counts[pid])),
        }
        for pid in sorted(counts)
    }


def summarise(records: Sequence[EvalRecord], *, seconds: float, bins: int = 10) -> dict[str, Any]:
    """Every figure of the evaluation, as a JSON-serialisable dict (see the module docstring)."""
    if bins < 1:
        raise ValueError(f"{bins=} must be at least 1")
    n = len(records)
    by_status = dict.fromkeys(STATUSES, 0)
    for r in records:
        by_status[r.status] += 1
    scored = [r for r in records if r.scored]
    agree = sum(r.agrees for r in records)
    credit = sum(_credit(r) for r in scored)
    consistent = [r for r in records if r.swap_consistent and r.status == "ok" and r.p_a is not None]
    consistent_agree = sum(r.agrees for r in consistent)
    overall = _proportion(agree, n)
    within = _proportion(consistent_agree, len(consistent))
    return {
        "labels": n,
        "by_status": by_status,
        "scored": len(scored),
        "agreement": overall["value"],
        "agreement_ci95": overall["ci95"],
        "agreement_scored": _rate(credit, len(scored)),
        "consistent_agreement": within["value"],
        "consistent_agreement_ci95": within["ci95"],
        "consistent_count": len(consistent),
        "consistent_fraction": _rate(len(consistent), n),
        **_position(records),
        "bins": bins,
        **_calibration(records, bins),
        "per_principle": _per_principle(records),
        "seconds": seconds,
        "labels_per_second": n / seconds if seconds > 0 else 0.0,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(summary: dict[str, Any]) -> str:
    """The headline figures and one row per principle, as fixed-width plain text."""
    s = summary
    statuses = ", ".join(f"{k} {v}" for k, v in s["by_status"].items() if v)
    headline: list[tuple[str, str, str]] = [
        ("labels", str(s["labels"]), statuses),
        ("scored", str(s["scored"]), "status ok or tie, with a score"),
        ("agreement", _pct(s["agreement"]), f"95% CI {_ci(s['agreement_ci95'])}; ties/unscored disagree"),
        ("agreement (scored)", _pct(s["agreement_scored"]), "over scored labels, a tie counts 0.5"),
        (
            "agreement (consistent)",
            _pct(s["consistent_agreement"]),
            f"95% CI {_ci(s['consistent_agreement_ci95'])}; n={s['consistent_count']}"
            f" ({_pct(s['consistent_fraction'])} of labels)",
        ),
        ("position consistency", _pct(s["position_consistency"]), f"pairs={s['position_pairs']}"),
        ("same position rate", _pct(s["same_position_rate"]), "both orders picked the same slot"),
        ("first position rate", _pct(s["first_position_rate"]), f"orders={s['orders']}"),
        ("ECE", _num(s["ece"]), f"{s['bins']} bins over confidence in [0.5, 1]; n={s['ece_count']}"),
        ("Brier", _num(s["brier"]), "of p(human's choice), scored labels"),
        ("mean p(human)", _num(s["mean_p_human"]), ""),
        ("labels/s", _num(s["labels_per_second"], 2), f"{_num(s['seconds'], 1)} s"),
    ]
    w0 = max(len(row[0]) for row in headline)
    w1 = max(len(row[1]) for row in headline)
    lines = [f"{name:<{w0}}  {value:>{w1}}  {note}".rstrip() for name, value, note in headline]
    principles = s["per_principle"]
    if principles:
        wp = max(9, *(len(pid) for pid in principles))
        lines += ["", f"{'principle':<{wp}}  {'n':>6}  {'agreement':>9}  95% CI", "-" * (wp + 40)]
        for pid, row in principles.items():
            lines.append(f"{pid:<{wp}}  {row['count']:>6}  {_pct(row['agreement']):>9}  {_ci(row['ci95'])}")
    return "\n".join(lines) + "\n"

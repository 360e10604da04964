"""Contrastive likelihood scoring: a judge without A/B slots, so without position bias.

For each principle, each response is scored as the assistant's reply to the conversation twice: under
the principle stated as an instruction, and under its negation (`prompts.contrast_instruction`). Its
score is the per-token log-likelihood gain of following over violating,
Δ = (log p(y | follow) − log p(y | violate)) / tokens(y); the label is p_a = σ(β·(Δ_A − Δ_B)), the
margin averaged over the principles first. Both responses are options of the same two requests, so
presenting A and B in either order gives exactly 1 − p_a. β is a calibration scale, fitted by
maximum likelihood on human-labelled pairs (`fit_beta`; `charter eval judge` reports it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from charter.constitution.schema import Principle
from charter.core.errors import InvalidArgument
from charter.inference.types import Message, OptionScores, ScoreRequest
from charter.judge import prompts
from charter.judge.labels import OrderOutcome, Verdict, choose

MAX_BETA = 1000.0


def options(response_a: str, response_b: str, *, defended: bool) -> tuple[str, str]:
    """The two responses as they are scored (stripped; escaped like all model text when defended)."""
    clean = prompts.escape if defended else (lambda s: s)
    return clean(response_a.strip()), clean(response_b.strip())


def requests(
    conversation: Sequence[Message], response_a: str, response_b: str, principle: Principle, *, defended: bool
) -> list[ScoreRequest]:
    """[under the principle, under its negation]; each scores (A, B) as the assistant's next turn.
    The responses must differ as scored (`options`); a conversation's own system messages give way to
    the instruction."""
    if not conversation or conversation[-1].role != "user":
        raise InvalidArgument("the contrastive judge needs a conversation that ends with a user turn")
    clean = prompts.escape if defended else (lambda s: s)
    turns = tuple(Message(role=m.role, content=clean(m.content)) for m in conversation if m.role != "system")
    scored = options(response_a, response_b, defended=defended)
    out = []
    for follow in (True, False):
        instruction = prompts.contrast_instruction(principle.comparison_question, follow=follow)
        out.append(
            ScoreRequest(messages=(Message(role="system", content=instruction), *turns), options=scored)
        )
    return out


def per_token(scores: OptionScores) -> tuple[float, ...]:
    return tuple(lp / max(n, 1) for lp, n in zip(scores.logprobs, scores.option_tokens, strict=True))


def margin(follow: OptionScores, violate: OptionScores) -> float:
    """Δ_A − Δ_B from the two requests' option scores."""
    (fa, fb), (va, vb) = per_token(follow), per_token(violate)
    return (fa - va) - (fb - vb)


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def check_beta(beta: float) -> None:
    if not (math.isfinite(beta) and 0.0 < beta <= MAX_BETA):
        raise InvalidArgument(
            f"contrastive_beta: must be in (0, {MAX_BETA:g}], got {beta}", field="contrastive_beta"
        )


def verdict(
    principles: Sequence[Principle],
    scores: Sequence[OptionScores],
    *,
    beta: float,
    tie_margin: float,
) -> tuple[Verdict, list[OrderOutcome]]:
    """The label from [follow, violate] scores per principle (in `principles` order)."""
    margins: list[float] = []
    orders: list[OrderOutcome] = []
    problems: list[str] = []
    for i, principle in enumerate(principles):
        follow, violate = scores[2 * i], scores[2 * i + 1]
        values = (*per_token(follow), *per_token(violate))
        if not all(math.isfinite(v) for v in values):
            problems.append(f"{principle.id}: non-finite log-likelihoods {values}")
            orders.append(OrderOutcome(principle.id, False, None, values, detail=problems[-1]))
            continue
        m = margin(follow, violate)
        margins.append(m)
        orders.append(OrderOutcome(principle.id, False, sigmoid(beta * m), values))
    if not margins:
        return Verdict(0.5, "TIE", 0.0, False, "unscorable", (), "; ".join(problems)), orders
    p_a = sigmoid(beta * sum(margins) / len(margins))
    choice = choose(p_a, tie_margin)
    used = tuple(o.principle_id for o in orders if o.p_first is not None)
    detail = ("dropped " + "; ".join(problems)) if problems else ""
    return (
        Verdict(
            p_a,
            choice,
            abs(p_a - 0.5) * 2.0,
            choice != "TIE",
            "tie" if choice == "TIE" else "ok",
            used,
            detail,
        ),
        orders,
    )


def fit_beta(margins: Sequence[float], a_preferred: Sequence[bool], *, iterations: int = 100) -> float | None:
    """The β > 0 that maximises the likelihood of the human choices under p_a = σ(β·margin) (Newton's
    method on a one-parameter logistic regression without intercept). None when no positive β helps:
    the margins do not point toward the human choice on average, or there is nothing to fit."""
    pairs = [(m, 1.0 if a else -1.0) for m, a in zip(margins, a_preferred, strict=True) if m != 0.0]
    if not pairs or sum(m * y for m, y in pairs) <= 0.0:
        return None
    beta = 1.0 / max(1e-12, math.sqrt(sum(m * m for m, _ in pairs) / len(pairs)))
    for _ in range(iterations):
        gradient = sum(y * m * sigmoid(-y * beta * m) for m, y in pairs)
        curvature = sum(m * m * sigmoid(beta * m) * sigmoid(-beta * m) for m, _ in pairs)
        if curvature <= 0.0:
            break
        step = gradient / curvature
        beta = max(beta + step, beta / 10.0)
        if abs(step) < 1e-10 * max(1.0, beta):
            break
    return min(beta, MAX_BETA)

"""Contextual calibration of the multiple-choice judge (Zhao et al. 2021, "Calibrate Before Use").

A small judge has an option prior of its own: asked about two empty replies it still says "(B)" more
often than "(A)". Calibration measures that prior for each principle's prompt on content-free inputs
(the conversation and both replies replaced by "N/A", by "[MASK]" and by nothing; the probabilities
averaged) and divides it out of every scored order: p' = (p/q) / (p/q + (1-p)/(1-q)), where q is the
prior probability of the first slot. With the two replies identical the prompt is the same in both
orders, so one prior per principle serves both. Priors depend only on the prompt's fixed parts, so the
judge measures each once and keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

from charter.constitution.schema import Constitution, Principle
from charter.inference.types import Message, OptionScores, ScoreRequest
from charter.judge import prompts

CONTENT_FREE = ("N/A", "[MASK]", "")
PRIOR_FLOOR = 1e-6
"""Priors are kept inside [floor, 1 - floor]: a judge certain of one slot on empty input still yields
finite calibrated probabilities."""


def prior_requests(
    constitution: Constitution, principle: Principle, *, few_shot_limit: int | None, defended: bool
) -> list[ScoreRequest]:
    """One scoring request per content-free input, laid out exactly as a real judging prompt."""
    few_shot = prompts.few_shot_messages(constitution, principle, limit=few_shot_limit, defended=defended)
    out = []
    for text in CONTENT_FREE:
        messages = prompts.judge_messages(
            few_shot, [Message(role="user", content=text)], text, text, principle, defended=defended
        )
        out.append(ScoreRequest(messages=(*messages, prompts.answer_turn()), options=prompts.OPTIONS))
    return out


def prior(scores: Sequence[OptionScores]) -> float:
    """The first slot's prior: its probability averaged over the content-free inputs."""
    q = sum(s.probs[0] for s in scores) / len(scores)
    return min(max(q, PRIOR_FLOOR), 1.0 - PRIOR_FLOOR)


def calibrate(p_first: float, prior_first: float) -> float:
    """`p_first` with the prior divided out and renormalised over the two options."""
    first = p_first / prior_first
    second = (1.0 - p_first) / (1.0 - prior_first)
    return first / (first + second)

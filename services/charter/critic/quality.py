"""Is a critique or revision usable? Model output is data that may be bad: each step gets a status."""

from __future__ import annotations

import re
from enum import StrEnum


class StepStatus(StrEnum):
    OK = "ok"
    EMPTY = "empty"
    ECHO = "echo"  # repeats the request instead of answering it
    TRUNCATED = "truncated"  # cut off by max_tokens
    DEGENERATE = "degenerate"  # loops on the same words
    ERROR = "error"  # the engine failed for this item


_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _repeats(words: list[str], source: str) -> bool:
    said = _words(source)
    return bool(said) and (
        words == said or (len(words) <= len(said) + 3 and " ".join(said) in " ".join(words))
    )


def classify(text: str, request: str, finish_reason: str, echoes: tuple[str, ...] = ()) -> StepStatus:
    """`echoes`: other texts the output must not merely repeat (a critique that restates the
    response it was asked to critique says nothing)."""
    words = _words(text)
    if not words:
        return StepStatus.EMPTY
    if any(_repeats(words, source) for source in (request, *echoes)):
        return StepStatus.ECHO
    if len(words) >= 24:
        trigrams = list(zip(words, words[1:], words[2:], strict=False))
        if len(set(trigrams)) / len(trigrams) < 0.35:
            return StepStatus.DEGENERATE
    if finish_reason == "length":
        return StepStatus.TRUNCATED
    return StepStatus.OK

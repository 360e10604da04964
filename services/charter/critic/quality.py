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


def classify(text: str, request: str, finish_reason: str) -> StepStatus:
    words = _words(text)
    if not words:
        return StepStatus.EMPTY
    asked = _words(request)
    if asked and (words == asked or (len(words) <= len(asked) + 3 and " ".join(asked) in " ".join(words))):
        return StepStatus.ECHO
    if len(words) >= 24:
        trigrams = list(zip(words, words[1:], words[2:], strict=False))
        if len(set(trigrams)) / len(trigrams) < 0.35:
            return StepStatus.DEGENERATE
    if finish_reason == "length":
        return StepStatus.TRUNCATED
    return StepStatus.OK

"""The constitution schema: principles, few-shot examples and sampling settings.

Pure: imports neither grpc nor generated code. Every model forbids unknown keys, so a typo in a
constitution file is an error that names the key instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Slug = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$"),
]
"""Ids of constitutions and principles: lower-case, digits, `.`, `_`, `-`; at most 64 characters."""

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20_000)]

QuestionSource = Literal["authored", "derived", "default"]
"""Where a comparison question came from: written by hand, derived from the critique/revision
requests on import, or a generic default. Anything but `authored` deserves a human look."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=50_000)


class Principle(_Strict):
    id: Slug
    critique_request: Text
    """Asked of the model after its response (CAI SL stage): what is wrong with it?"""
    revision_request: Text
    """Asked after the critique: rewrite the response to fix it."""
    comparison_question: Text
    """The judge's multiple-choice question, e.g. 'Which response is less harmful?'."""
    comparison_question_source: QuestionSource = "authored"
    weight: float = Field(default=1.0, gt=0.0, le=1000.0)
    """Relative probability of this principle being sampled."""
    tags: tuple[Annotated[str, StringConstraints(min_length=1, max_length=64)], ...] = ()


class CritiqueExample(_Strict):
    """A few-shot conversation for critique→revision: prompt, answer, critique request, critique,
    revision request, revision — the turns alternate user/assistant, starting with the user."""

    messages: tuple[ChatMessage, ...] = Field(min_length=2)

    @field_validator("messages")
    @classmethod
    def _alternates(cls, messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
        turns = [m for m in messages if m.role != "system"]
        for i, m in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if m.role != expected:
                raise ValueError(f"turn {i} has role {m.role!r}; turns must alternate user/assistant")
        if turns and turns[-1].role != "assistant":
            raise ValueError("a few-shot conversation must end with an assistant turn")
        return messages


class ComparisonExample(_Strict):
    """A labelled few-shot example for the judge."""

    conversation: tuple[ChatMessage, ...] = Field(min_length=1)
    response_a: str
    response_b: str
    preferred: Literal["A", "B"]
    principle_id: Slug | None = None
    """When set, the example is asked with that principle's question (and shown with every principle's
    prompt, so the few-shot block is one shared prefix); unset, with the question being asked."""


class FewShot(_Strict):
    critique_revision: tuple[CritiqueExample, ...] = ()
    comparison: tuple[ComparisonExample, ...] = ()


class Sampling(_Strict):
    critique_rounds: int = Field(default=1, ge=1, le=16)
    """Critique→revision rounds per response in SL-CAI."""
    principles_per_label: int = Field(default=1, ge=1, le=64)
    """Principles averaged per judge label (1 = one principle sampled per label)."""


class Constitution(_Strict):
    id: Slug
    version: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")]
    description: Text
    principles: tuple[Principle, ...]
    few_shot: FewShot = FewShot()
    sampling: Sampling = Sampling()
    source: str | None = Field(default=None, max_length=2000)
    """Where the text came from, for imported constitutions."""

    @field_validator("principles")
    @classmethod
    def _principles(cls, principles: tuple[Principle, ...]) -> tuple[Principle, ...]:
        if not principles:
            raise ValueError("must list at least one principle")
        seen: set[str] = set()
        for p in principles:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        return principles

    @model_validator(mode="after")
    def _references(self) -> Constitution:
        ids = {p.id for p in self.principles}
        for ex in self.few_shot.comparison:
            if ex.principle_id is not None and ex.principle_id not in ids:
                raise ValueError(f"few_shot.comparison names unknown principle {ex.principle_id!r}")
        if self.sampling.principles_per_label > len(self.principles):
            raise ValueError(
                f"sampling.principles_per_label={self.sampling.principles_per_label} exceeds "
                f"the {len(self.principles)} principles defined"
            )
        return self

    def principle(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    @property
    def digest(self) -> str:
        return content_digest(self)


def canonical_json(constitution: Constitution) -> str:
    """The canonical text the digest is taken over: every field (defaults included), sorted keys,
    no insignificant whitespace. YAML comments, key order and quoting do not change it."""
    return json.dumps(
        constitution.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )


def content_digest(constitution: Constitution) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(constitution).encode("utf-8")).hexdigest()

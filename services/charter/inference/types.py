"""The engine-neutral request and result types, and the `InferenceClient` protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SAMPLES = 64


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(_Frozen):
    role: Literal["system", "user", "assistant"]
    content: str


def _check_messages(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    if not messages:
        raise ValueError("messages is empty; a request needs at least one message")
    if all(not m.content.strip() for m in messages):
        raise ValueError("every message is empty")
    return messages


class Sampling(_Frozen):
    n: int = Field(default=1, ge=1, le=MAX_SAMPLES)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    """0 = greedy."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1)
    stop: tuple[str, ...] = ()
    seed: int | None = Field(default=None, ge=0, lt=2**63)


class ChatRequest(_Frozen):
    """A conversation to continue with a new assistant turn."""

    messages: tuple[Message, ...]
    sampling: Sampling = Sampling()

    _messages = field_validator("messages")(_check_messages)


class ScoreRequest(_Frozen):
    """Which option is the model likelier to write next?

    The prompt is the conversation rendered with the model's chat template. When the last message is
    an assistant message it is *continued* (the prompt ends right after its text, e.g.
    "… The less harmful response is ("), otherwise a new assistant turn is opened. Each option is the
    text that would come next (e.g. "A" or " (A)"); it may span several tokens.
    """

    messages: tuple[Message, ...]
    options: tuple[str, ...] = Field(min_length=2, max_length=26)

    _messages = field_validator("messages")(_check_messages)

    @field_validator("options")
    @classmethod
    def _options(cls, options: tuple[str, ...]) -> tuple[str, ...]:
        if any(not o for o in options):
            raise ValueError("an option is empty")
        if len(set(options)) != len(options):
            raise ValueError(f"options repeat: {options!r}")
        return options


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass(frozen=True)
class ChatResult:
    completions: tuple[Completion, ...]
    """`n` samples, in order."""


@dataclass(frozen=True)
class OptionScores:
    probs: tuple[float, ...]
    """Normalised over the options: sum to 1."""
    logprobs: tuple[float, ...]
    """Total log-probability of each option's tokens after the prompt."""
    option_tokens: tuple[int, ...]
    """How many tokens each option took."""
    prompt_tokens: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    engine: str
    path: str
    max_model_len: int
    revision: str = ""


class InferenceClient(Protocol):
    """What services depend on. Results come back in request order; one bad request in a batch
    raises for the whole call (validate first); deadlines raise `DeadlineExceeded`."""

    @property
    def model(self) -> ModelInfo: ...

    async def chat(
        self, requests: Sequence[ChatRequest], *, timeout: float | None = None
    ) -> list[ChatResult]: ...

    def chat_stream(
        self, requests: Sequence[ChatRequest], *, timeout: float | None = None
    ) -> AsyncIterator[tuple[int, ChatResult]]:
        """Yields (index, result) as each request finishes."""
        ...

    async def score_options(
        self, requests: Sequence[ScoreRequest], *, timeout: float | None = None
    ) -> list[OptionScores]: ...

    async def healthy(self) -> bool:
        """Whether the engine can serve calls now (the services' health probe)."""
        ...

    async def close(self) -> None: ...

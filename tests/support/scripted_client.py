"""A hand-written `InferenceClient` whose replies are scripted, including malformed ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from charter.core.errors import Unavailable
from charter.inference.types import ChatRequest, ChatResult, Completion, ModelInfo, OptionScores, ScoreRequest

Reply = str | tuple[str, str] | Exception  # text, (text, finish_reason), or an error to raise


class ScriptedClient:
    """`reply(request) -> Reply` decides each answer; every request is recorded."""

    def __init__(self, reply: Callable[[ChatRequest], Reply]) -> None:
        self.reply = reply
        self.requests: list[ChatRequest] = []
        self.model = ModelInfo("scripted", "scripted", "-", 4096)

    async def chat(
        self, requests: Sequence[ChatRequest], *, timeout: float | None = None
    ) -> list[ChatResult]:
        out = []
        for r in requests:
            self.requests.append(r)
            answer = self.reply(r)
            if isinstance(answer, Exception):
                raise answer
            text, finish = answer if isinstance(answer, tuple) else (answer, "stop")
            out.append(
                ChatResult(
                    tuple(Completion(text, 10, len(text.split()), finish) for _ in range(r.sampling.n))
                )
            )
        return out

    async def chat_stream(
        self, requests: Sequence[ChatRequest], *, timeout: float | None = None
    ) -> AsyncIterator[tuple[int, ChatResult]]:
        for i, r in enumerate(requests):
            yield i, (await self.chat([r]))[0]

    async def score_options(
        self, requests: Sequence[ScoreRequest], *, timeout: float | None = None
    ) -> list[OptionScores]:
        raise Unavailable("the scripted client does not score")

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        pass

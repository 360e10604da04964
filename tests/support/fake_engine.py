"""A scripted engine on the real `LocalEngine` worker: no model, controllable timing and failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from charter.core.errors import InvalidArgument
from charter.inference.local import LocalEngine
from charter.inference.tokens import ScoreItem
from charter.inference.types import ChatRequest, ChatResult, Completion, ModelInfo, ScoreRequest


class FakeEngine(LocalEngine):
    """Replies "echo: <last message>"; a message "too long" is rejected at preparation; each engine
    call sleeps `delay` seconds and records how many requests it received."""

    engine_name = "fake"

    def __init__(self, delay: float = 0.0, *, name: str = "fake", path: str = "-", **kwargs) -> None:
        self.delay = delay
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        super().__init__(ModelInfo(name, "fake", path, 100), **kwargs)

    def _prepare_chat(self, requests: Sequence[ChatRequest]) -> list[ChatRequest]:
        for r in requests:
            if r.messages[-1].content == "too long":
                raise InvalidArgument("prompt is 999 tokens; it exceeds the model's context of 100 tokens")
        return list(requests)

    def _generate(self, prepared: list[ChatRequest]) -> list[ChatResult]:
        self.gate.wait()
        self.calls.append(len(prepared))
        time.sleep(self.delay)
        return [
            ChatResult(
                tuple(
                    Completion(f"echo: {r.messages[-1].content}", 3, 2, "stop") for _ in range(r.sampling.n)
                )
            )
            for r in prepared
        ]

    def _prepare_scores(self, requests: Sequence[ScoreRequest]) -> list[ScoreItem]:
        return [ScoreItem([1, 2, 3], [[10 + i] for i in range(len(r.options))]) for r in requests]

    def _score(self, items: list[ScoreItem]) -> list[list[float]]:
        self.calls.append(len(items))
        return [[-float(i + 1) for i in range(len(item.options))] for item in items]

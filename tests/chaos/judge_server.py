"""`python -m tests.chaos.judge_server CONFIG`: the judge service as `charter serve judge --config
CONFIG` runs it, on a scripted engine — no model, so the chaos test spends its time on faults, not on
inference. Each score is a fixed function of the prompt's text (a hash), so a pair judged again after a
kill gets the same label; a batch takes `DELAY` seconds, so a kill can land mid-call."""

from __future__ import annotations

import asyncio
import sys
import time
import zlib

from charter.app.catalog import SERVICES, Resources
from charter.core.logging import configure_logging
from charter.core.server import CharterServer
from charter.core.settings import load_settings
from charter.inference.tokens import ScoreItem

from tests.support.fake_engine import FakeEngine

DELAY = 0.3


class HashedScores(FakeEngine):
    """Option logits from a hash of the prompt: the two orders of a pair are two prompts, so some pairs
    come out swap-consistent and confident (auto-accepted) and others not (queued for people)."""

    def _prepare_scores(self, requests):
        items = []
        for r in requests:
            h = zlib.crc32("\n".join(m.content for m in r.messages).encode())
            items.append(ScoreItem([h % 1_000_003], [[10 + i] for i in range(len(r.options))]))
        return items

    def _score(self, items):
        time.sleep(DELAY)
        out = []
        for item in items:
            h = item.prompt[0]
            margin = (h % 9 - 4) * 0.6  # -2.4 .. 2.4: a pair judged confidently one way, or a tie
            out.append([margin if i == 0 else -margin if i == 1 else -9.0 for i in range(len(item.options))])
        return out


async def serve(config: str) -> None:
    settings = load_settings(config)
    configure_logging(settings.logging)
    resources = Resources(settings, engine=HashedScores(name="chaos-judge"))
    try:
        server = CharterServer(settings.server, [SERVICES["judge"].registration_for(resources)])
        await server.serve()
    finally:
        await resources.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))

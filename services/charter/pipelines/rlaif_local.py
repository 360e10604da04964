"""The steps of `kind: rlaif` in local mode (`pipelines.rlaif` runs the loop): the judge, the current
policy's generator, the review ledger (a database this process writes) and the trainer service all
run in this process tree. The judge's engine is built once and shared by labelling and evaluation,
and it also serves the starting policy when that is the judge's own model; each trained policy gets
an engine of its own for its iteration's samples. `pipelines.rlaif_remote` is the same interface over
deployed services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from charter.app.local import local_services
from charter.core.settings import CharterSettings
from charter.inference.types import InferenceClient
from charter.pipelines import rlaif_steps as steps
from charter.pipelines.rlaif_spec import RlaifSpec


class LocalServices:
    """The judge service (one engine for the whole run) and the current policy's generator."""

    mode = "local"

    def __init__(self, spec: RlaifSpec, settings: CharterSettings, engine: InferenceClient | None) -> None:
        self.spec, self.settings = spec, settings
        self.stack = contextlib.AsyncExitStack()
        self.judge_engine = engine
        self._owns_judge_engine = engine is None
        self._judge: str | None = None
        self._generator: tuple[str, str, contextlib.AsyncExitStack] | None = None
        """(policy version, address, what to close)."""
        self.database = spec.review.database or f"sqlite:///{(spec.output / 'review.db').resolve()}"

    def judge_settings(self) -> CharterSettings:
        j = self.spec.judge
        update = {k: v for k, v in (("method", j.method), ("logit_scale", j.logit_scale),
                                    ("contrastive_beta", j.contrastive_beta)) if v is not None}  # fmt: skip
        return self.settings.model_copy(update={"judge": self.settings.judge.model_copy(update=update)})

    async def _engine(self) -> InferenceClient:
        if self.judge_engine is None:
            from charter.inference.factory import build_engine

            self.judge_engine = await asyncio.to_thread(build_engine, self.settings.inference)
        return self.judge_engine

    async def judge(self) -> str:
        if self._judge is None:
            engine = await self._engine()
            self._judge = await self.stack.enter_async_context(
                local_services(self.judge_settings(), ("judge",), engine=engine, drain_seconds=0)
            )
        return self._judge

    def judge_token_file(self) -> Path | None:
        return None

    async def generator(self, policy: dict[str, Any]) -> str:
        """A generator serving `policy` (the judge's engine when it is the judge's own model)."""
        if self._generator is not None and self._generator[0] == policy["version"]:
            return self._generator[1]
        await self.close_generator()
        stack = contextlib.AsyncExitStack()
        if policy["model"] == self.settings.inference.model:
            engine = await self._engine()
        else:
            from charter.inference.factory import build_engine

            inference = self.settings.inference.model_copy(update={"model": policy["model"]})
            name = f"{self.spec.name}/{policy['version']}"
            engine = await asyncio.to_thread(build_engine, inference, name=name)
            stack.push_async_callback(engine.close)
        address = await stack.enter_async_context(
            local_services(self.settings, ("generator",), engine=engine, drain_seconds=0)
        )
        self._generator = (policy["version"], address, stack)
        return address

    async def close_generator(self) -> None:
        if self._generator is not None:
            await self._generator[2].aclose()
            self._generator = None

    async def route(
        self, iteration: int, records: Sequence[Mapping[str, Any]], tags: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every label's route (the budget applied with `review.routing`) and what was submitted."""
        routing = self.settings.review.routing
        routed = steps.route(records, routing, self.spec.review.human_budget, tags)
        submitted = await asyncio.to_thread(steps.submit, self.database, routing, records, routed)
        return routed, {"submitted": submitted, "ledger": self.database}

    async def training_rows(
        self, records: Sequence[Mapping[str, Any]], routed: Sequence[Mapping[str, Any]],
        route: Mapping[str, Any], tags: Mapping[str, Any],
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:  # fmt: skip
        return await asyncio.to_thread(
            steps.training_rows, records, routed, self.database, self.spec.review.over_budget, tags
        )

    async def train(self, iteration: int, base_model: str, data: Path) -> dict[str, Any]:
        return await steps.train(self.spec, iteration, base_model, data, self.settings)

    async def promote(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        """Local mode: the promoted policy is the next iteration's generator (nothing to do now)."""
        return {}

    async def close(self) -> None:
        await self.close_generator()
        await self.stack.aclose()
        if self.judge_engine is not None and self._owns_judge_engine:
            await self.judge_engine.close()

"""Judging pairs: principle sampling, prompt plans for both orders, scoring, and the verdicts.

Three scoring methods (`JudgeConfig.method`): multiple choice (the option log-probabilities of "(A)"
and "(B)", both orders averaged), the same with contextual calibration (`calibration`: each
principle's option prior divided out), and contrastive likelihood (`contrastive`: no A/B slots).

Engine-neutral (any `InferenceClient`) and protocol-neutral (the servicer converts). Each item's
scoring prompts go to the engine as one call; the calls of a batch are issued together, so the
engine batches them, and one item's bad input (longer than the context, …) fails only that item.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from charter.constitution.schema import Principle
from charter.core import metrics
from charter.core.errors import (
    CharterError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from charter.inference.types import (
    ChatRequest,
    InferenceClient,
    Message,
    OptionScores,
    Sampling,
    ScoreRequest,
)
from charter.judge import calibration, contrastive, prompts
from charter.judge.budget import Budget
from charter.judge.config import JudgeConfig, Pair, draw_principles, label_id
from charter.judge.labels import OrderOutcome, Verdict, combine

_TRANSIENT = (Unavailable, DeadlineExceeded, ResourceExhausted)


@dataclass
class Label:
    pair: Pair
    verdict: Verdict
    orders: list[OrderOutcome]
    status: str
    """ok | tie | unscorable | error | invalid_input."""
    detail: str = ""
    id: str = ""
    raw_text: str = ""
    prompt_tokens: int = 0


@dataclass(frozen=True)
class _Plan:
    principle: Principle
    swapped: bool
    messages: list[Message] = field(default_factory=list)


def _plans(pair: Pair, config: JudgeConfig) -> list[_Plan]:
    constitution = config.constitution.constitution
    plans = []
    for principle in draw_principles(pair, config):
        few_shot = prompts.few_shot_messages(
            constitution, principle, limit=config.few_shot_limit, defended=config.defended
        )
        for swapped in (False,) if config.single_order else (False, True):
            first, second = (
                (pair.response_b, pair.response_a) if swapped else (pair.response_a, pair.response_b)
            )
            messages = prompts.judge_messages(
                few_shot,
                pair.conversation,
                first,
                second,
                principle,
                defended=config.defended,
                chain_of_thought=config.chain_of_thought,
            )
            plans.append(_Plan(principle, swapped, messages))
    return plans


def _outcome(
    plan: _Plan, scores: OptionScores, rationale: str = "", prior_first: float | None = None
) -> OrderOutcome:
    finite = all(math.isfinite(lp) for lp in scores.logprobs) and all(math.isfinite(p) for p in scores.probs)
    p_first = scores.probs[0] if finite else None
    if p_first is not None and prior_first is not None:
        p_first = calibration.calibrate(p_first, prior_first)
    return OrderOutcome(
        principle_id=plan.principle.id,
        swapped=plan.swapped,
        p_first=p_first,
        logprobs=scores.logprobs,
        rationale=rationale,
        detail="" if finite else f"non-finite option scores {scores.logprobs}",
        prior_first=prior_first,
    )


def _prior_key(principle: Principle, config: JudgeConfig) -> tuple[str, ...]:
    return (config.constitution.digest, principle.id, str(config.few_shot_limit), str(config.defended))


class Judge:
    def __init__(self, client: InferenceClient, *, max_requests_in_flight: int = 512) -> None:
        self.client = client
        self._budget = Budget(max_requests_in_flight)
        self._priors: dict[tuple[str, ...], float] = {}
        """Calibration priors by (constitution digest, principle, few-shot options): measured once."""
        self._priors_lock = asyncio.Lock()

    async def prepare(self, pairs: Sequence[Pair], config: JudgeConfig, timeout: float | None = None) -> None:
        """Measure what judging `pairs` needs once: the calibration prior of every principle they will
        draw that is not known yet (calibrated method; nothing otherwise). `label` calls it too."""
        if config.method != "calibrated":
            return
        async with self._priors_lock:
            missing: dict[tuple[str, ...], Principle] = {}
            for pair in pairs:
                for principle in draw_principles(pair, config):
                    key = _prior_key(principle, config)
                    if key not in self._priors:
                        missing[key] = principle
            if not missing:
                return
            constitution = config.constitution.constitution
            requests = [
                calibration.prior_requests(
                    constitution, p, few_shot_limit=config.few_shot_limit, defended=config.defended
                )
                for p in missing.values()
            ]
            scores = await self.client.score_options(
                [r for group in requests for r in group], timeout=timeout
            )
            start = 0
            for key, group in zip(missing, requests, strict=True):
                self._priors[key] = calibration.prior(scores[start : start + len(group)])
                start += len(group)

    async def _rationales(self, plans: list[_Plan], config: JudgeConfig, timeout: float | None) -> list[str]:
        sampling = Sampling(
            temperature=0.0, max_tokens=config.cot_max_tokens, stop=(prompts.COT_ANSWER_PREFIX,)
        )
        results = await self.client.chat(
            [ChatRequest(messages=tuple(p.messages), sampling=sampling) for p in plans], timeout=timeout
        )
        return [r.completions[0].text for r in results]

    async def _one(self, pair: Pair, config: JudgeConfig, timeout: float | None) -> Label:
        if config.method == "contrastive":  # two requests a principle: under it, under its negation
            principles = draw_principles(pair, config)
            requests = 2 * len(principles)
            work: Callable[[], Awaitable[Label]]
            work = lambda: self._contrastive(pair, principles, config, timeout)  # noqa: E731
        else:
            plans = _plans(pair, config)
            requests = len(plans)
            work = lambda: self._judge(pair, plans, config, timeout)  # noqa: E731
        taken = await self._budget.take(requests)
        try:
            return await work()
        finally:
            await self._budget.give(taken)

    async def _contrastive(
        self, pair: Pair, principles: list[Principle], config: JudgeConfig, timeout: float | None
    ) -> Label:
        a, b = contrastive.options(pair.response_a, pair.response_b, defended=config.defended)
        if a == b:  # nothing to tell apart: no engine call
            orders = [OrderOutcome(p.id, False, 0.5) for p in principles]
            verdict = Verdict(
                0.5, "TIE", 0.0, False, "tie", tuple(p.id for p in principles), "identical responses"
            )
            return Label(
                pair, verdict, orders, "tie", verdict.detail, label_id(pair, config, self.client.model)
            )
        try:
            requests = [
                r
                for p in principles
                for r in contrastive.requests(
                    pair.conversation, pair.response_a, pair.response_b, p, defended=config.defended
                )
            ]
            scores = await self.client.score_options(requests, timeout=timeout)
        except InvalidArgument as err:
            return self._failed(pair, config, [], "invalid_input", str(err), principles)
        verdict, orders = contrastive.verdict(
            principles, scores, beta=config.contrastive_beta, tie_margin=config.tie_margin
        )
        return self._scored(pair, config, verdict, orders, scores)

    async def _judge(
        self, pair: Pair, plans: list[_Plan], config: JudgeConfig, timeout: float | None
    ) -> Label:
        try:
            rationales: list[str | None] = [None] * len(plans)
            if config.chain_of_thought:
                rationales = list(await self._rationales(plans, config, timeout))
            requests = [
                ScoreRequest(
                    messages=(*p.messages, prompts.answer_turn(r, defended=config.defended)),
                    options=prompts.OPTIONS,
                )
                for p, r in zip(plans, rationales, strict=True)
            ]
            scores = await self.client.score_options(requests, timeout=timeout)
        except InvalidArgument as err:
            return self._failed(pair, config, plans, "invalid_input", str(err))
        priors = [
            self._priors[_prior_key(p.principle, config)] if config.method == "calibrated" else None
            for p in plans
        ]
        orders = [
            _outcome(p, s, r or "", q) for p, s, r, q in zip(plans, scores, rationales, priors, strict=True)
        ]
        verdict = combine(
            orders,
            tie_margin=config.tie_margin,
            clamp_range=config.clamp if config.chain_of_thought else None,
            logit_scale=config.logit_scale,
        )
        raw = ""
        if verdict.status == "unscorable":
            raw = json.dumps([{"principle_id": o.principle_id, "swapped": o.swapped, "logprobs": o.logprobs,
                               "rationale": o.rationale} for o in orders])  # fmt: skip
        return self._scored(pair, config, verdict, orders, scores, raw)

    def _scored(
        self,
        pair: Pair,
        config: JudgeConfig,
        verdict: Verdict,
        orders: list[OrderOutcome],
        scores: Sequence[OptionScores],
        raw: str = "",
    ) -> Label:
        return Label(
            pair=pair,
            verdict=verdict,
            orders=orders,
            status=verdict.status,
            detail=verdict.detail,
            id=label_id(pair, config, self.client.model),
            raw_text=raw,
            prompt_tokens=sum(s.prompt_tokens for s in scores),
        )

    def _failed(
        self,
        pair: Pair,
        config: JudgeConfig,
        plans: list[_Plan],
        status: str,
        detail: str,
        principles: Sequence[Principle] = (),
    ) -> Label:
        ids = tuple(dict.fromkeys([*(p.principle.id for p in plans), *(p.id for p in principles)]))
        return Label(
            pair=pair,
            verdict=Verdict(0.5, "TIE", 0.0, False, "unscorable", ids, detail),
            orders=[],
            status=status,
            detail=detail,
            id=label_id(pair, config, self.client.model),
        )

    async def label(
        self, pairs: Sequence[Pair], config: JudgeConfig, *, timeout: float | None = None
    ) -> list[Label]:
        """One label per pair, in order. Input errors and per-item engine failures become labels
        with a status; an engine that is down raises (the caller retries the batch)."""
        if config.method == "calibrated":
            try:
                await self.prepare(pairs, config, timeout)
            except CharterError as err:
                if isinstance(err, _TRANSIENT):
                    raise
                detail = f"calibration prior: {err}"
                return [
                    self._failed(p, config, [], "error", detail, draw_principles(p, config)) for p in pairs
                ]
        results = await asyncio.gather(
            *(self._one(p, config, timeout) for p in pairs), return_exceptions=True
        )
        labels: list[Label] = []
        for pair, result in zip(pairs, results, strict=True):
            if isinstance(result, CharterError) and not isinstance(result, _TRANSIENT):
                labels.append(
                    self._failed(pair, config, [], "error", str(result), draw_principles(pair, config))
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                labels.append(result)
        for label in labels:
            metrics.JUDGE_LABELS.labels(label.status, str(label.verdict.swap_consistent).lower()).inc()
            if label.status in ("ok", "tie"):
                metrics.JUDGE_CONFIDENCE.observe(label.verdict.confidence)
        return labels

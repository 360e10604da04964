"""`JudgeService`: thin — convert the request, judge, convert the labels back.

`Compare` labels a batch and answers once; `CompareStream` answers each label as soon as its item is
scored (items run concurrently, so the engine sees them as one large batch).

Both are bounded by the call's deadline (`context.time_remaining()`): every engine call — scoring,
chain-of-thought rationales, calibration priors — gets the time left, and the whole call ends
DEADLINE_EXCEEDED when it is spent, so an engine job whose caller has given up is dropped by the
engine instead of run, whether or not anything cancels the handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
from grpc import aio

from charter.api import common as convert
from charter.api import judge as api
from charter.constitution.registry import ConstitutionRegistry
from charter.core import tracing
from charter.core.errors import (
    CharterError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from charter.inference.deadlines import as_completed_within, await_with_deadline, deadline_in, time_left
from charter.inference.types import InferenceClient
from charter.judge.config import JudgeConfig
from charter.judge.core import Judge, Label


class JudgeServicer(judge_pb2_grpc.JudgeServiceServicer):
    def __init__(
        self,
        client: InferenceClient,
        registry: ConstitutionRegistry,
        *,
        tie_margin: float = 0.0,
        few_shot_limit: int | None = None,
        cot_max_tokens: int = 192,
        max_requests_in_flight: int = 512,
        method: str = "multiple_choice",
        contrastive_beta: float = 1.0,
        logit_scale: float = 1.0,
    ) -> None:
        self.judge = Judge(client, max_requests_in_flight=max_requests_in_flight)
        self.client = client
        self.registry = registry
        self.tie_margin = tie_margin
        self.few_shot_limit = few_shot_limit
        self.cot_max_tokens = cot_max_tokens
        self.method = method
        self.contrastive_beta = contrastive_beta
        self.logit_scale = logit_scale

    def config(self, options: judge_pb2.JudgeOptions) -> JudgeConfig:
        if not options.constitution_id:
            raise InvalidArgument("options.constitution_id: name the constitution to judge by")
        return api.config(
            options,
            self.registry.get(options.constitution_id),
            tie_margin=self.tie_margin,
            few_shot_limit=self.few_shot_limit,
            cot_max_tokens=self.cot_max_tokens,
            method=self.method,
            contrastive_beta=self.contrastive_beta,
            logit_scale=self.logit_scale,
        )

    async def healthy(self) -> bool:
        """The server's health probe (`charter.core.server`): SERVING only while the engine can serve."""
        return await self.client.healthy()

    async def Compare(
        self, request: judge_pb2.CompareRequest, context: aio.ServicerContext[Any, Any]
    ) -> judge_pb2.CompareResponse:
        timeout = context.time_remaining()
        config = self.config(request.options)
        pairs = api.pairs(request.items)
        traces = convert.item_traceparents(request.item_traceparents, len(pairs))
        # per engine call, and for the whole (chain of thought: a rationale, then scores)
        with tracing.item_spans("judge.item", traces):
            labels = await await_with_deadline(self.judge.label(pairs, config, timeout=timeout), timeout)
        return judge_pb2.CompareResponse(
            labels=[
                api.label_proto(label, config, self.client, request.request_id, item)
                for label, item in zip(labels, request.items, strict=True)
            ]
        )

    async def CompareStream(
        self, request: judge_pb2.CompareStreamRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[judge_pb2.CompareStreamResponse]:
        timeout = context.time_remaining()
        deadline = deadline_in(timeout)
        config = self.config(request.options)
        pairs = api.pairs(request.items)
        traces = convert.item_traceparents(request.item_traceparents, len(pairs))
        try:  # calibration priors once for the whole request, not item by item
            await await_with_deadline(self.judge.prepare(pairs, config, timeout), timeout)
        except (Unavailable, DeadlineExceeded, ResourceExhausted):
            raise
        except CharterError:
            pass  # not the engine being down: each item reports it as its label's status

        left = time_left(deadline)

        async def one(i: int) -> tuple[int, Label]:
            attributes = {"charter.item_index": i, "charter.conversation_id": pairs[i].conversation_id}
            with tracing.item_span("judge.item", traces[i], attributes) as span:
                label = (await self.judge.label([pairs[i]], config, timeout=left))[0]
                if span is not None:
                    span.set_attribute("charter.status", label.status)
            return i, label

        async for i, label in as_completed_within([one(i) for i in range(len(pairs))], left):
            yield judge_pb2.CompareStreamResponse(
                item_index=i,
                label=api.label_proto(label, config, self.client, request.request_id, request.items[i]),
            )

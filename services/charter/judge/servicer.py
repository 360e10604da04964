"""`JudgeService`: thin — convert the request, judge, convert the labels back.

`Compare` labels a batch and answers once; `CompareStream` answers each label as soon as its item is
scored (items run concurrently, so the engine sees them as one large batch).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

from charter_proto.common.v1 import label_pb2
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
from grpc import aio

from charter.constitution.registry import ConstitutionRegistry
from charter.core import convert
from charter.core.errors import InvalidArgument
from charter.inference.deadlines import as_completed_within
from charter.inference.types import InferenceClient, Sampling
from charter.judge.core import DEFAULT_CLAMP, Judge, JudgeConfig, Label, Pair

MAX_ITEMS = 4096

STATUS = {
    "ok": label_pb2.LABEL_STATUS_OK,
    "tie": label_pb2.LABEL_STATUS_TIE,
    "unscorable": label_pb2.LABEL_STATUS_UNSCORABLE,
    "error": label_pb2.LABEL_STATUS_ERROR,
    "invalid_input": label_pb2.LABEL_STATUS_INVALID_INPUT,
}
STATUS_NAMES = {v: k.removeprefix("LABEL_STATUS_").lower() for k, v in label_pb2.LabelStatus.items()}
"""Proto status -> the lower-case names used in records and summaries ("ok", "tie", ...)."""
CHOICE = {"A": label_pb2.CHOICE_A, "B": label_pb2.CHOICE_B, "TIE": label_pb2.CHOICE_TIE}


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
    ) -> None:
        self.judge = Judge(client, max_requests_in_flight=max_requests_in_flight)
        self.client = client
        self.registry = registry
        self.tie_margin = tie_margin
        self.few_shot_limit = few_shot_limit
        self.cot_max_tokens = cot_max_tokens

    def config(self, options: judge_pb2.JudgeOptions) -> JudgeConfig:
        if not options.constitution_id:
            raise InvalidArgument("options.constitution_id: name the constitution to judge by")
        loaded = self.registry.get(options.constitution_id)
        low = options.cot_clamp_low if options.HasField("cot_clamp_low") else DEFAULT_CLAMP[0]
        high = options.cot_clamp_high if options.HasField("cot_clamp_high") else DEFAULT_CLAMP[1]
        try:
            return JudgeConfig(
                constitution=loaded,
                principles_per_label=options.principles_per_label,
                principle_ids=tuple(options.principle_ids),
                seed=options.seed if options.HasField("seed") else random.SystemRandom().randrange(2**63),
                chain_of_thought=options.chain_of_thought,
                clamp=(low, high),
                single_order=options.single_order,
                tie_margin=options.tie_margin if options.HasField("tie_margin") else self.tie_margin,
                few_shot_limit=self.few_shot_limit,
                cot_max_tokens=self.cot_max_tokens,
            )
        except InvalidArgument as err:
            raise InvalidArgument(f"options.{err}", field=f"options.{err.field}") from None

    def _pairs(self, items: Any) -> list[Pair]:
        if not items:
            raise InvalidArgument("items: at least one item is required")
        if len(items) > MAX_ITEMS:
            raise InvalidArgument(f"items: {len(items)} items exceed the limit of {MAX_ITEMS} per call")
        pairs = []
        for i, item in enumerate(items):
            conversation = convert.messages(item.conversation, f"items[{i}].conversation")
            for name in ("response_a", "response_b"):
                if not getattr(item, name).strip():
                    raise InvalidArgument(
                        f"items[{i}].{name}: the response is empty", field=f"items[{i}].{name}"
                    )
            pairs.append(Pair(tuple(conversation), item.response_a, item.response_b, item.conversation.id))
        return pairs

    async def Compare(
        self, request: judge_pb2.CompareRequest, context: aio.ServicerContext
    ) -> judge_pb2.CompareResponse:
        config = self.config(request.options)
        pairs = self._pairs(request.items)
        labels = await self.judge.label(pairs, config)
        return judge_pb2.CompareResponse(
            labels=[
                label_proto(label, config, self.client, request.request_id, item)
                for label, item in zip(labels, request.items, strict=True)
            ]
        )

    async def CompareStream(
        self, request: judge_pb2.CompareStreamRequest, context: aio.ServicerContext
    ) -> AsyncIterator[judge_pb2.CompareStreamResponse]:
        config = self.config(request.options)
        pairs = self._pairs(request.items)

        async def one(i: int) -> tuple[int, Label]:
            return i, (await self.judge.label([pairs[i]], config))[0]

        async for i, label in as_completed_within([one(i) for i in range(len(pairs))], None):
            yield judge_pb2.CompareStreamResponse(
                item_index=i,
                label=label_proto(label, config, self.client, request.request_id, request.items[i]),
            )


def label_proto(
    label: Label, config: JudgeConfig, client: InferenceClient, request_id: str, item: Any
) -> label_pb2.PreferenceLabel:
    v = label.verdict
    principle_ids = list(v.principle_ids)
    sampling = Sampling(temperature=0.0, max_tokens=config.cot_max_tokens if config.chain_of_thought else 1)
    return label_pb2.PreferenceLabel(
        id=label.id,
        conversation=item.conversation,
        response_a=item.response_a,
        response_b=item.response_b,
        p_a=v.p_a,
        choice=CHOICE[v.choice] if label.status in ("ok", "tie") else label_pb2.CHOICE_UNSPECIFIED,
        confidence=v.confidence,
        swap_consistent=v.swap_consistent,
        scores=[
            label_pb2.OrderScore(
                swapped=o.swapped,
                p_first=o.p_first if o.p_first is not None else 0.0,
                option_logprobs=list(o.logprobs),
                principle_id=o.principle_id,
                rationale=o.rationale,
            )
            for o in label.orders
        ],
        principle_ids=principle_ids,
        status=STATUS[label.status],
        raw_text=label.raw_text,
        judge=convert.model_proto(client.model),
        constitution=convert.constitution_ref(config.constitution),
        provenance=convert.provenance(
            config.constitution, principle_ids, client.model, sampling, config.seed, request_id
        ),
        chain_of_thought=config.chain_of_thought,
        status_detail=label.detail,
    )

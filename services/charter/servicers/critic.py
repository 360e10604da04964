"""`CriticReviserService`: thin — convert, run the rounds, convert back.

Pairs of a streaming request run concurrently; their engine calls reach the engine together.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from typing import Any

from charter_proto.common.v1 import critique_pb2
from charter_proto.critic.v1 import critic_pb2, critic_pb2_grpc
from grpc import aio

from charter.api import common as convert
from charter.constitution.registry import ConstitutionRegistry, LoadedConstitution
from charter.core import tracing
from charter.core.errors import InvalidArgument
from charter.critic.quality import StepStatus
from charter.critic.rounds import Outcome, check_rounds, critique_revise
from charter.inference.deadlines import as_completed_within, deadline_in
from charter.inference.types import InferenceClient, Message, Sampling

MAX_ITEMS = 4096

STATUS = {
    StepStatus.OK: critique_pb2.STEP_STATUS_OK,
    StepStatus.EMPTY: critique_pb2.STEP_STATUS_EMPTY,
    StepStatus.ECHO: critique_pb2.STEP_STATUS_ECHO,
    StepStatus.TRUNCATED: critique_pb2.STEP_STATUS_TRUNCATED,
    StepStatus.DEGENERATE: critique_pb2.STEP_STATUS_DEGENERATE,
    StepStatus.ERROR: critique_pb2.STEP_STATUS_ERROR,
}


def item_key(conversation: list[Message], response: str, conversation_id: str) -> str:
    """What principle sampling is keyed on: the caller's id, or the content."""
    if conversation_id:
        return conversation_id
    text = "\x1e".join(f"{m.role}\x1f{m.content}" for m in conversation) + "\x1d" + response
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class CriticReviserServicer(critic_pb2_grpc.CriticReviserServiceServicer):
    def __init__(
        self,
        client: InferenceClient,
        registry: ConstitutionRegistry,
        *,
        default_max_tokens: int = 256,
        few_shot_limit: int | None = None,
    ) -> None:
        self.client = client
        self.registry = registry
        self.default_max_tokens = default_max_tokens
        self.few_shot_limit = few_shot_limit

    async def healthy(self) -> bool:
        """The server's health probe (`charter.core.server`): SERVING only while the engine can serve."""
        return await self.client.healthy()

    def _options(self, options: critic_pb2.CritiqueOptions) -> tuple[LoadedConstitution, int, Sampling, int]:
        if not options.constitution_id:
            raise InvalidArgument("options.constitution_id: name the constitution to critique against")
        loaded = self.registry.get(options.constitution_id)
        rounds = options.rounds or loaded.constitution.sampling.critique_rounds
        check_rounds(rounds)
        sampling = convert.sampling(options.sampling, self.default_max_tokens)
        seed = options.seed if options.HasField("seed") else random.SystemRandom().randrange(2**63)
        return loaded, rounds, sampling, seed

    async def _run(
        self,
        item: critic_pb2.CritiqueItem,
        where: str,
        options: critic_pb2.CritiqueOptions,
        setup: tuple[LoadedConstitution, int, Sampling, int],
        request_id: str,
        deadline: float | None,
    ) -> critic_pb2.CritiqueResult:
        loaded, rounds, sampling, seed = setup
        conversation = convert.messages(item.conversation, f"{where}.conversation")
        if not item.response.strip():
            raise InvalidArgument(f"{where}.response: the response to critique is empty")
        convert.check_text(item.response, f"{where}.response")
        outcome = await critique_revise(
            self.client,
            loaded.constitution,
            conversation,
            item.response,
            rounds=rounds,
            sampling=sampling,
            seed=seed,
            item_key=item_key(conversation, item.response, item.conversation.id),
            principle_ids=list(options.principle_ids),
            few_shot_limit=self.few_shot_limit,
            deadline=deadline,
        )
        return result_proto(
            outcome,
            convert.provenance(loaded, outcome.principle_ids, self.client.model, sampling, seed, request_id),
        )

    async def CritiqueRevise(
        self, request: critic_pb2.CritiqueReviseRequest, context: aio.ServicerContext[Any, Any]
    ) -> critic_pb2.CritiqueReviseResponse:
        setup = self._options(request.options)
        deadline = deadline_in(context.time_remaining())
        result = await self._run(request.item, "item", request.options, setup, request.request_id, deadline)
        return critic_pb2.CritiqueReviseResponse(result=result)

    async def CritiqueReviseStream(
        self, request: critic_pb2.CritiqueReviseStreamRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[critic_pb2.CritiqueReviseStreamResponse]:
        if not request.items:
            raise InvalidArgument("items: at least one item is required")
        if len(request.items) > MAX_ITEMS:
            raise InvalidArgument(
                f"items: {len(request.items)} items exceed the limit of {MAX_ITEMS} per call"
            )
        setup = self._options(request.options)
        for i, item in enumerate(request.items):  # validate every item before any work starts
            convert.messages(item.conversation, f"items[{i}].conversation")
            convert.check_text(item.response, f"items[{i}].response")

        traces = convert.item_traceparents(request.item_traceparents, len(request.items))
        deadline = deadline_in(context.time_remaining())

        async def one(i: int, item: critic_pb2.CritiqueItem) -> tuple[int, critic_pb2.CritiqueResult]:
            attributes = {"charter.item_index": i, "charter.conversation_id": item.conversation.id}
            with tracing.item_span("critic.item", traces[i], attributes) as span:
                where = f"items[{i}]"
                result = await self._run(item, where, request.options, setup, request.request_id, deadline)
                if span is not None:
                    span.set_attribute("charter.status", convert.STEP_STATUS_NAMES[result.status])
            return i, result

        async for i, result in as_completed_within(
            [one(i, item) for i, item in enumerate(request.items)], None
        ):
            yield critic_pb2.CritiqueReviseStreamResponse(item_index=i, result=result)


def result_proto(outcome: Outcome, provenance: Any) -> critic_pb2.CritiqueResult:
    return critic_pb2.CritiqueResult(
        rounds=[
            critique_pb2.CritiqueRound(
                index=r.index,
                attempt=r.attempt,
                principle_id=r.principle_id,
                critique_request=r.critique_request,
                critique=r.critique,
                critique_status=STATUS[r.critique_status],
                revision_request=r.revision_request,
                revision=r.revision,
                revision_status=STATUS[r.revision_status]
                if r.revision_status
                else critique_pb2.STEP_STATUS_UNSPECIFIED,
                critique_tokens=r.critique_tokens,
                revision_tokens=r.revision_tokens,
                prompt_tokens=r.prompt_tokens,
            )
            for r in outcome.rounds
        ],
        final_revision=outcome.final_revision,
        status=STATUS[outcome.status],
        provenance=provenance,
    )

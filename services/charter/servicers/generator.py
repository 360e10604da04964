"""`GeneratorService`: thin — convert, delegate to the served policy's engine, stream back.

Every prompt of a request is submitted to the engine at once and concurrent requests land in the
same engine batches (the in-process engines merge waiting jobs), so the service never serialises
prompts; each (prompt, sample) streams back as soon as its prompt is done.

A call holds a lease on the served policy (`inference.policy.ServedPolicy`) from its first prompt to
its last reply, so all its replies come from one model and carry that model's policy version;
`SwapModel` waits for those leases (the drain) before it replaces the model; `PushWeights` writes the
streamed safetensors file to a folder of its own and has the policy load it in place the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from grpc import aio

from charter.api import common as convert
from charter.core import tracing
from charter.core.errors import CharterError, InvalidArgument
from charter.inference.deadlines import as_completed_within
from charter.inference.policy import ServedPolicy
from charter.inference.types import ChatRequest, ChatResult

MAX_PROMPTS = 4096
log = structlog.get_logger("charter.generator")


async def _as_folder(ref: str) -> tuple[str, str]:
    return ref, ref


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """`resolve`: a `SwapModel` model reference (a folder, `run:<id>`) -> (the model folder to load,
    the name to serve it by: `run:<id>@latest` is served as the round it is, `run:<id>@3`);
    `follow`: background work on the policy while the service serves (following the trainer's runs),
    started with the server and cancelled when it drains."""

    def __init__(
        self,
        policy: ServedPolicy,
        *,
        default_max_tokens: int = 256,
        resolve: Callable[[str], Awaitable[tuple[str, str]]] = _as_folder,
        follow: Callable[[ServedPolicy], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.policy = policy
        self.default_max_tokens = default_max_tokens
        self.resolve = resolve
        self.follow = follow
        self._following: asyncio.Task[None] | None = None

    # -- lifecycle (charter.core.server.Lifecycle) ----------------------------------------------

    async def healthy(self) -> bool:
        """The server's health probe (`charter.core.server`): SERVING only while the engine can serve."""
        return await self.policy.engine.healthy()

    async def start(self) -> None:
        if self.follow is not None:
            self._following = asyncio.create_task(self.follow(self.policy))

    async def drain(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
            self._following = None

    async def stop(self) -> None:
        await self.drain()
        await self.policy.close()

    # -- RPCs -----------------------------------------------------------------------------------

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        if not request.prompts:
            raise InvalidArgument("prompts: at least one prompt is required", field="prompts")
        if len(request.prompts) > MAX_PROMPTS:
            raise InvalidArgument(
                f"prompts: {len(request.prompts)} prompts exceed the limit of {MAX_PROMPTS} per call"
            )
        sampling = convert.sampling(request.sampling, self.default_max_tokens)
        traces = convert.item_traceparents(request.item_traceparents, len(request.prompts))
        chats = [
            ChatRequest(messages=tuple(convert.messages(p, f"prompts[{i}]")), sampling=sampling)
            for i, p in enumerate(request.prompts)
        ]
        async with self.policy.lease(context.time_remaining()) as (engine, version):
            model = convert.model_proto(engine.model, version)
            timeout = context.time_remaining()

            async def one(i: int, chat: ChatRequest) -> tuple[int, ChatResult]:
                attributes = {"charter.item_index": i, "charter.conversation_id": request.prompts[i].id}
                try:
                    with tracing.item_span("generator.prompt", traces[i], attributes):
                        [result] = await engine.chat([chat], timeout=timeout)
                except CharterError as err:
                    raise type(err)(f"prompts[{i}]: {err.message}", field=f"prompts[{i}]") from None
                return i, result

            async for i, result in as_completed_within([one(i, c) for i, c in enumerate(chats)], None):
                for s, completion in enumerate(result.completions):
                    yield generator_pb2.GenerateResponse(
                        prompt_index=i,
                        conversation_id=request.prompts[i].id,
                        sample_index=s,
                        completion=convert.completion_proto(completion),
                        model=model,
                    )

    async def SwapModel(
        self, request: generator_pb2.SwapModelRequest, context: aio.ServicerContext[Any, Any]
    ) -> generator_pb2.SwapModelResponse:
        ref = request.model.strip()
        if not ref:
            raise InvalidArgument("model: name a model folder or run:<id> to serve", field="model")
        folder, name = await self.resolve(ref)
        outcome = await self.policy.swap(folder, name)
        log.info(
            "generator.policy.swapped",
            version=outcome.version.id,
            previous=outcome.previous.id,
            paused_seconds=round(outcome.paused_seconds, 3),
        )
        return generator_pb2.SwapModelResponse(
            model=convert.model_proto(outcome.engine.model, outcome.version),
            previous=convert.model_proto(outcome.previous_engine.model, outcome.previous),
            paused_seconds=outcome.paused_seconds,
        )

    async def PushWeights(
        self,
        request_iterator: AsyncIterator[generator_pb2.PushWeightsRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> generator_pb2.PushWeightsResponse:
        folder = Path(tempfile.mkdtemp(prefix="charter-push-"))
        handed = False  # once the policy has the folder, it removes it when the push ends
        try:
            name, request_id, received = "", "", 0
            with (folder / "model.safetensors").open("wb") as out:
                async for chunk in request_iterator:
                    name, request_id = name or chunk.name.strip(), request_id or chunk.request_id
                    received += len(chunk.data)
                    await asyncio.to_thread(out.write, chunk.data)
            if not name:
                raise InvalidArgument("name: the first message names the pushed weights", field="name")
            if not received:
                raise InvalidArgument("data: no bytes were pushed", field="data")
            handed = True
            outcome = await self.policy.push(str(folder), name, remove=True)
        finally:
            if not handed:
                shutil.rmtree(folder, ignore_errors=True)
        log.info(
            "generator.weights.pushed",
            request_id=request_id or uuid.uuid4().hex,
            version=outcome.version.id,
            previous=outcome.previous.id,
            bytes=received,
            paused_seconds=round(outcome.paused_seconds, 3),
        )
        return generator_pb2.PushWeightsResponse(
            model=convert.model_proto(outcome.engine.model, outcome.version),
            previous=convert.model_proto(outcome.engine.model, outcome.previous),
            tensors=outcome.tensors,
            bytes=received,
            paused_seconds=outcome.paused_seconds,
        )

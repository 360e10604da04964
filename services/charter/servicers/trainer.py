"""The TrainerService over gRPC: each handler converts the request (`charter.api.trainer`) and
delegates to the run lifecycle (`charter.trainer.lifecycle.RunLifecycle`), which starts, follows,
resumes and cancels runs through an executor and keeps them in the run store. Who may call is the
server interceptor's job (`charter.app.catalog.ROLES`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import structlog
from charter_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from grpc import aio

from charter.api import trainer as convert
from charter.api.trainer_limits import check_spec_sizes
from charter.core import db
from charter.core.settings import CharterSettings, TrainerSettings
from charter.trainer.executor import Executor
from charter.trainer.lifecycle import RunLifecycle, build_executor
from charter.trainer.store import RunStore

log = structlog.get_logger("charter.trainer")

__all__ = ["TrainerServicer", "build_executor"]


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, store: RunStore, executor: Executor, settings: TrainerSettings) -> None:
        self.store, self.executor, self.settings = store, executor, settings
        self.runs = RunLifecycle(store, executor, settings, convert.spec_json)

    @classmethod
    def from_settings(cls, settings: CharterSettings) -> TrainerServicer:
        s = settings.trainer
        store = convert.run_store(s.database_url.get_secret_value())
        log.info("trainer.store.opened", database=store.url.render_as_string(hide_password=True))
        return cls(store, build_executor(s), s)

    # -- lifecycle (charter.core.server.Lifecycle) ----------------------------------------------

    async def start(self) -> None:
        await self.runs.start()

    async def healthy(self) -> bool:
        """The server's health probe: SERVING only while the run store's database answers."""
        return await db.answers(asyncio.to_thread(self.store.ping), log, "trainer.store.unreachable")

    async def drain(self) -> None:
        await self.runs.drain()

    async def stop(self) -> None:
        await self.runs.stop()

    # -- RPCs -----------------------------------------------------------------------------------

    async def StartRun(
        self, request: trainer_pb2.StartRunRequest, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        check_spec_sizes(request.spec)
        run = await self.runs.start_run(convert.spec_from_proto(request.spec), request.idempotency_key)
        return trainer_pb2.StartRunResponse(run=convert.run_to_proto(run))

    async def GetRun(self, request: trainer_pb2.GetRunRequest, context: aio.ServicerContext[Any, Any]) -> Any:
        return trainer_pb2.GetRunResponse(run=convert.run_to_proto(await self.runs.get(request.run_id)))

    async def ListRuns(
        self, request: trainer_pb2.ListRunsRequest, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        runs, token = await self.runs.list(list(request.states), request.page_size, request.page_token)
        return trainer_pb2.ListRunsResponse(
            runs=[convert.run_to_proto(r) for r in runs], next_page_token=token
        )

    async def CancelRun(
        self, request: trainer_pb2.CancelRunRequest, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        run = await self.runs.cancel(request.run_id, request.reason)
        return trainer_pb2.CancelRunResponse(run=convert.run_to_proto(run))

    async def ResumeRun(
        self, request: trainer_pb2.ResumeRunRequest, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        run = await self.runs.resume(request.run_id)
        return trainer_pb2.ResumeRunResponse(run=convert.run_to_proto(run))

    async def ListRounds(
        self, request: trainer_pb2.ListRoundsRequest, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        rounds = await self.runs.rounds(request.run_id)
        return trainer_pb2.ListRoundsResponse(rounds=[convert.round_to_proto(r) for r in rounds])

    async def WatchRun(
        self, request: trainer_pb2.WatchRunRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[trainer_pb2.WatchRunResponse]:
        async for event in self.runs.watch(request.run_id, request.after_sequence):
            yield trainer_pb2.WatchRunResponse(event=convert.event_to_proto(event))

"""A client of the trainer service: start, follow, list, cancel and resume training runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import grpc
import structlog
from charter_proto.trainer.v1 import trainer_pb2 as tp
from charter_proto.trainer.v1 import trainer_pb2_grpc

from charter.client.base import ServiceClient

log = structlog.get_logger("charter.client.trainer")
WATCH_RECONNECTS = 5
"""UNAVAILABLE cuts in a row (no event between) on which `watch_run` opens the stream again."""


class TrainerClient(ServiceClient):
    """The trainer service's runs over gRPC. Messages are the service's own (`charter.trainer.v1`).

    Example (start a DPO run on the accepted labels and watch it):
        async with TrainerClient("trainer:50055", token=service_token) as trainer:
            run = await trainer.start_run(spec)            # a trainer_pb2.RunSpec
            async for event in trainer.watch_run(run.id):  # metrics, checkpoints, state changes
                print(event)
    """

    service = "the trainer"
    stub_type = trainer_pb2_grpc.TrainerServiceStub

    async def start_run(self, spec: tp.RunSpec, idempotency_key: str = "") -> tp.Run:
        """Check `spec` and start it; the same `idempotency_key` again returns the same run."""
        request = tp.StartRunRequest(spec=spec, idempotency_key=idempotency_key)
        response: tp.StartRunResponse = await self.stub.StartRun(request, timeout=self.timeout)
        return response.run

    async def get_run(self, run_id: str) -> tp.Run:
        request = tp.GetRunRequest(run_id=run_id)
        response: tp.GetRunResponse = await self.call(lambda: self.stub.GetRun(request, timeout=self.timeout))
        return response.run

    async def list_runs(
        self, states: list[int] | None = None, page_size: int = 0, page_token: str = ""
    ) -> tp.ListRunsResponse:
        """One page of runs, newest first (`next_page_token` for the next)."""
        request = tp.ListRunsRequest(
            states=cast("list[tp.RunState.ValueType]", states or []),
            page_size=page_size,
            page_token=page_token,
        )
        return await self.call(lambda: self.stub.ListRuns(request, timeout=self.timeout))

    async def watch_run(
        self, run_id: str, after_sequence: int = 0, *, max_backoff: float = 5.0
    ) -> AsyncIterator[tp.RunEvent]:
        """The run's events after `after_sequence`, then live ones until the run ends (no deadline).
        A stream cut with UNAVAILABLE — a server closing an aged connection
        (`server.max_connection_age_seconds` and its grace), a restart — is opened again after the
        last event delivered, so none is missed or repeated; `WATCH_RECONNECTS` cuts in a row with no
        event between raise."""
        cursor, backoff, cuts = after_sequence, 0.2, 0
        while True:
            request = tp.WatchRunRequest(run_id=run_id, after_sequence=cursor)
            try:
                async for response in self.stub.WatchRun(request):
                    yield response.event
                    cursor, backoff, cuts = response.event.sequence, 0.2, 0
                return
            except grpc.aio.AioRpcError as err:
                cuts += 1
                if err.code() is not grpc.StatusCode.UNAVAILABLE or cuts > WATCH_RECONNECTS:
                    raise
                log.warning("trainer.watch.reconnect", run_id=run_id, cursor=cursor, retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    async def cancel_run(self, run_id: str, reason: str = "") -> tp.Run:
        request = tp.CancelRunRequest(run_id=run_id, reason=reason)
        response: tp.CancelRunResponse = await self.stub.CancelRun(request, timeout=self.timeout)
        return response.run

    async def resume_run(self, run_id: str) -> tp.Run:
        """Start a new attempt of a failed or cancelled run from its last checkpoint."""
        request = tp.ResumeRunRequest(run_id=run_id)
        response: tp.ResumeRunResponse = await self.stub.ResumeRun(request, timeout=self.timeout)
        return response.run

    async def list_rounds(self, run_id: str) -> list[tp.Round]:
        """The rounds a continuous run has published, oldest first."""
        request = tp.ListRoundsRequest(run_id=run_id)
        return list((await self.call(lambda: self.stub.ListRounds(request, timeout=self.timeout))).rounds)

"""The trainer service as `charter train` and `charter runs` reach it: a stub for a running service, or
for one started in this process (`charter.app.local`), and `StoreReader`, which answers the read-only
calls straight from the local run store.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from charter_proto.trainer.v1 import trainer_pb2 as tp
from charter_proto.trainer.v1 import trainer_pb2_grpc

from charter.api import trainer as convert
from charter.core.settings import CharterSettings


class StoreReader:
    """GetRun/ListRuns/WatchRun (history only) straight from the local run store: read-only commands
    without --address start no service (which would adopt and launch runs)."""

    def __init__(self, settings: CharterSettings) -> None:
        self.store = convert.run_store(settings.trainer.database_url.get_secret_value())

    async def GetRun(self, request: tp.GetRunRequest) -> tp.GetRunResponse:
        return tp.GetRunResponse(run=convert.run_to_proto(self.store.get(request.run_id)))

    async def ListRuns(self, request: tp.ListRunsRequest) -> tp.ListRunsResponse:
        runs, token = self.store.list(list(request.states), request.page_size, request.page_token)
        return tp.ListRunsResponse(runs=[convert.run_to_proto(r) for r in runs], next_page_token=token)

    async def WatchRun(self, request: tp.WatchRunRequest) -> AsyncIterator[tp.WatchRunResponse]:
        after = request.after_sequence
        while batch := self.store.events(request.run_id, after):
            for event in batch:
                yield tp.WatchRunResponse(event=convert.event_to_proto(event))
            after = batch[-1].sequence


@contextlib.asynccontextmanager
async def trainer_reader(
    address: str | None, settings: CharterSettings, token: str | None = None
) -> AsyncIterator[Any]:
    """`trainer_stub(address)` with an address; else a `StoreReader` (read-only commands)."""
    if address is not None:
        async with trainer_stub(address, settings, token) as stub:
            yield stub
        return
    reader = StoreReader(settings)
    try:
        yield reader
    finally:
        reader.store.close()


@contextlib.asynccontextmanager
async def trainer_stub(
    address: str | None, settings: CharterSettings, token: str | None = None
) -> AsyncIterator[trainer_pb2_grpc.TrainerServiceStub]:
    """A stub for `address` (calls carry `token`), or for a trainer service started here on a free
    local port."""
    from charter.client.channel import open_channel

    async with contextlib.AsyncExitStack() as stack:
        if address is None:
            from charter.app.local import local_services

            address = await stack.enter_async_context(local_services(settings, ["trainer"], drain_seconds=0))
        async with open_channel(address, token=token) as channel:
            yield trainer_pb2_grpc.TrainerServiceStub(channel)

"""The trainer service as `charter train` and `charter runs` reach it: a `TrainerClient` for a running
service, or for one started in this process (`charter.app.local`), and `StoreReader`, which answers
the read-only calls straight from the local run store.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from charter_proto.trainer.v1 import trainer_pb2 as tp

from charter.api import trainer as convert
from charter.client.trainer import TrainerClient
from charter.core.settings import CharterSettings


class StoreReader:
    """`TrainerClient`'s read-only calls (get_run, list_runs, list_rounds, watch_run: history only) from
    the local run store: read-only commands without --address start no service (which would adopt
    and launch runs)."""

    def __init__(self, settings: CharterSettings) -> None:
        self.store = convert.run_store(settings.trainer.database_url.get_secret_value())

    async def get_run(self, run_id: str) -> tp.Run:
        return convert.run_to_proto(self.store.get(run_id))

    async def list_runs(
        self, states: list[int] | None = None, page_size: int = 0, page_token: str = ""
    ) -> tp.ListRunsResponse:
        runs, token = self.store.list(list(states or []), page_size, page_token)
        return tp.ListRunsResponse(runs=[convert.run_to_proto(r) for r in runs], next_page_token=token)

    async def list_rounds(self, run_id: str) -> list[tp.Round]:
        return [convert.round_to_proto(r) for r in self.store.rounds(run_id)]

    async def watch_run(self, run_id: str, after_sequence: int = 0) -> AsyncIterator[tp.RunEvent]:
        after = after_sequence
        while batch := self.store.events(run_id, after):
            for event in batch:
                yield convert.event_to_proto(event)
            after = batch[-1].sequence


@contextlib.asynccontextmanager
async def trainer_reader(
    address: str | None, settings: CharterSettings, token: str | None = None
) -> AsyncIterator[Any]:
    """`trainer_client(address)` with an address; else a `StoreReader` (read-only commands)."""
    if address is not None:
        async with trainer_client(address, settings, token) as client:
            yield client
        return
    reader = StoreReader(settings)
    try:
        yield reader
    finally:
        reader.store.close()


@contextlib.asynccontextmanager
async def trainer_client(
    address: str | None, settings: CharterSettings, token: str | None = None
) -> AsyncIterator[TrainerClient]:
    """A client of `address` (calls carry `token`), or of a trainer service started here on a free
    local port."""
    async with contextlib.AsyncExitStack() as stack:
        if address is None:
            from charter.app.local import local_services

            address = await stack.enter_async_context(local_services(settings, ["trainer"], drain_seconds=0))
        async with TrainerClient(address, token=token) as client:
            yield client

"""A client of the trainer service: start, follow, list, cancel and resume training runs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from charter_proto.trainer.v1 import trainer_pb2 as tp
from charter_proto.trainer.v1 import trainer_pb2_grpc

from charter.client.base import ServiceClient


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
        return (await self.stub.StartRun(request, timeout=self.timeout)).run

    async def get_run(self, run_id: str) -> tp.Run:
        request = tp.GetRunRequest(run_id=run_id)
        return (await self.call(lambda: self.stub.GetRun(request, timeout=self.timeout))).run

    async def list_runs(
        self, states: list[int] | None = None, page_size: int = 0, page_token: str = ""
    ) -> tp.ListRunsResponse:
        """One page of runs, newest first (`next_page_token` for the next)."""
        request = tp.ListRunsRequest(states=states or [], page_size=page_size, page_token=page_token)
        return await self.call(lambda: self.stub.ListRuns(request, timeout=self.timeout))

    async def watch_run(self, run_id: str, after_sequence: int = 0) -> AsyncIterator[tp.RunEvent]:
        """The run's events after `after_sequence`, then live ones until the run ends (no deadline)."""
        request = tp.WatchRunRequest(run_id=run_id, after_sequence=after_sequence)
        async for response in self.stub.WatchRun(request):
            yield response.event

    async def cancel_run(self, run_id: str, reason: str = "") -> tp.Run:
        request = tp.CancelRunRequest(run_id=run_id, reason=reason)
        return (await self.stub.CancelRun(request, timeout=self.timeout)).run

    async def resume_run(self, run_id: str) -> tp.Run:
        """Start a new attempt of a failed or cancelled run from its last checkpoint."""
        return (await self.stub.ResumeRun(tp.ResumeRunRequest(run_id=run_id), timeout=self.timeout)).run

    async def list_rounds(self, run_id: str) -> list[tp.Round]:
        """The rounds a continuous run has published, oldest first."""
        request = tp.ListRoundsRequest(run_id=run_id)
        return list((await self.call(lambda: self.stub.ListRounds(request, timeout=self.timeout))).rounds)

"""The generator following the trainer (`generator.follow_run_name`): every `follow_poll_seconds` it
asks the trainer service (`TrainerClient.list_runs`) for the newest succeeded run with that spec name
that trained a policy (a reward-model run is not one), and swaps to the run's final model when that
run is not the one it serves — each round of an online loop that starts a new run under the same
name is served as soon as it succeeds. Trouble reaching the trainer or loading a model is logged and
tried again at the next poll; the model served until then keeps serving.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from charter_proto.trainer.v1 import trainer_pb2 as tp
from grpc import aio

from charter.client.trainer import TrainerClient
from charter.core.errors import CharterError
from charter.inference.policy import ServedPolicy, SwapOutcome

log = structlog.get_logger("charter.generator")

PAGE = 50
"""Succeeded runs looked at per poll, newest first."""


class PolicyFollower:
    def __init__(self, policy: ServedPolicy, trainer: TrainerClient, run_name: str) -> None:
        self.policy = policy
        self.trainer = trainer
        self.run_name = run_name
        self.followed: str | None = None
        """The run whose model the follower last swapped in."""
        self.refused: set[str] = set()
        """Runs whose model could not be served (not found, not loadable): not tried again."""

    async def newest(self) -> tp.Run | None:
        """The newest succeeded policy run named `run_name`, if any."""
        page = await self.trainer.list_runs(states=[tp.RunState.RUN_STATE_SUCCEEDED], page_size=PAGE)
        for run in page.runs:
            if run.spec.name == self.run_name and run.spec.algorithm != tp.Algorithm.ALGORITHM_REWARD_MODEL:
                return run
        return None

    async def poll(self) -> SwapOutcome | None:
        """One look at the trainer; the swap it made, if any."""
        run = await self.newest()
        if run is None or run.id == self.followed or run.id in self.refused:
            return None
        folder = Path(run.output_dir) / "model"
        try:
            outcome = await self.policy.swap(str(folder), f"run:{run.id}")
        except CharterError as err:
            if not err.retryable:  # a drain that timed out is tried again; a bad model is not
                self.refused.add(run.id)
            raise
        self.followed = run.id
        log.info("generator.follow.swapped", run_id=run.id, version=outcome.version.id,
                 previous=outcome.previous.id, paused_seconds=round(outcome.paused_seconds, 3))  # fmt: skip
        return outcome

    async def run(self, poll_seconds: float) -> None:
        """Poll until cancelled."""
        while True:
            try:
                await self.poll()
            except CharterError as err:
                log.warning("generator.follow.failed", run_name=self.run_name, error=err.message)
            except aio.AioRpcError as err:
                log.warning("generator.follow.failed", run_name=self.run_name,
                            error=f"{err.code().name}: {err.details()}")  # fmt: skip
            await asyncio.sleep(poll_seconds)


async def follow_trainer(
    policy: ServedPolicy, *, address: str, token: str | None, run_name: str, poll_seconds: float
) -> None:
    """Follow `run_name` on the trainer at `address` until cancelled (the generator's drain)."""
    async with TrainerClient(address, token=token, timeout=30.0) as trainer:
        await PolicyFollower(policy, trainer, run_name).run(poll_seconds)

"""The generator following the trainer (`generator.follow_run_name`): every `follow_poll_seconds` it
asks the trainer service (`TrainerClient.list_runs`) for the newest run with that spec name that
trained a policy (a reward-model run is not one) and has a model — a bounded run that succeeded, or a
continuous run (`RunSpec.continuous`) that has published a round, in any state — and swaps to that
model when it is not the one it serves: each run of an online loop that starts a new run under the
same name is served as soon as it succeeds, each round of a continuous run as soon as it is
published (served as `run:ID@N`, so `ModelRef.policy_version` names the round). Trouble reaching the
trainer or loading a model is logged and tried again at the next poll; the model served until then
keeps serving.
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
        """The model reference (`run:ID`, `run:ID@N`) the follower last swapped in."""
        self.refused: set[str] = set()
        """References whose model could not be served (not found, not loadable): not tried again."""

    async def newest(self) -> tuple[tp.Run, int] | None:
        """The newest policy run named `run_name` with a model, and its round (0: a bounded run)."""
        page = await self.trainer.list_runs(page_size=PAGE)
        for run in page.runs:
            if run.spec.name != self.run_name or run.spec.algorithm == tp.Algorithm.ALGORITHM_REWARD_MODEL:
                continue
            if run.spec.HasField("continuous"):
                if run.latest_round:
                    return run, run.latest_round
            elif run.state == tp.RunState.RUN_STATE_SUCCEEDED:
                return run, 0
        return None

    async def poll(self) -> SwapOutcome | None:
        """One look at the trainer; the swap it made, if any."""
        found = await self.newest()
        if found is None:
            return None
        run, round_ = found
        ref = f"run:{run.id}@{round_}" if round_ else f"run:{run.id}"
        if ref == self.followed or ref in self.refused:
            return None
        if round_:
            rounds = await self.trainer.list_rounds(run.id)
            folder = next((r.model_dir for r in rounds if r.round == round_), "")
        else:
            folder = run.output_dir
            if not (
                Path(folder) / "config.json"
            ).exists():  # output_dir names the model; older records its parent
                folder = str(Path(folder) / "model")
        try:
            outcome = await self.policy.swap(folder, ref)
        except CharterError as err:
            if not err.retryable:  # a drain that timed out is tried again; a bad model is not
                self.refused.add(ref)
            raise
        self.followed = ref
        log.info("generator.follow.swapped", run_id=run.id, round=round_, version=outcome.version.id,
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

"""The trainer service in-process on port 0 (workers are real subprocesses training tiny models), and
helpers to build specs and follow runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from charter.app.local import local_services
from charter.client.channel import open_channel
from charter.core.settings import CharterSettings, load_settings
from charter_proto.trainer.v1 import trainer_pb2 as tp
from charter_proto.trainer.v1 import trainer_pb2_grpc
from google.protobuf.struct_pb2 import Struct

from tests.support import SHARED_DATA

TERMINAL = (tp.RUN_STATE_SUCCEEDED, tp.RUN_STATE_FAILED, tp.RUN_STATE_CANCELLED)


def roots_for(tmp: Path) -> list[str]:
    """The folders a test's run specs may name: pytest's base folder of `tmp` (the test's own and the
    module fixtures' folders), the shared data and the model cache (`trainer.allowed_roots`)."""
    from charter.inference.models import default_cache_dir

    return [str(tmp.parent), str(SHARED_DATA), str(default_cache_dir())]


def trainer_settings(tmp: Path, **trainer: Any) -> CharterSettings:
    return load_settings(
        trainer={
            "database_url": f"sqlite:///{tmp / 'trainer.db'}",
            "runs_dir": str(tmp / "runs"),
            "worker_threads": 1,
            "poll_seconds": 0.1,
            "allowed_roots": roots_for(tmp),
            **trainer,
        }
    )


@contextlib.asynccontextmanager
async def serving(name: str, settings: CharterSettings) -> AsyncIterator[tuple[grpc.aio.Channel, int]]:
    """Service `name` built from `settings`, in-process on a free localhost port: (channel, port)."""
    async with (
        local_services(settings, [name], drain_seconds=0) as address,
        open_channel(address) as channel,
    ):
        yield channel, int(address.rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def trainer_service(settings: CharterSettings) -> AsyncIterator[trainer_pb2_grpc.TrainerServiceStub]:
    async with serving("trainer", settings) as (channel, _):
        yield trainer_pb2_grpc.TrainerServiceStub(channel)


def run_spec(
    algorithm: int, base_model: str | Path, *, files: list[str] | None = None, eval_fraction: float = 0.0,
    reward_model: str = "", seed: int = 0, name: str = "test", **hyperparameters: Any,
) -> tp.RunSpec:  # fmt: skip
    spec = tp.RunSpec(
        name=name, algorithm=algorithm, base_model=str(base_model), reward_model=reward_model, seed=seed
    )
    if files is not None:
        spec.data.files.paths.extend(files)
    spec.data.eval_fraction = eval_fraction
    struct = Struct()
    struct.update(hyperparameters)
    spec.hyperparameters.CopyFrom(struct)
    return spec


async def watch(
    stub: trainer_pb2_grpc.TrainerServiceStub, run_id: str, after: int = 0, *, timeout: float = 300
) -> list[tp.RunEvent]:
    """Every event after `after` until the run ends."""
    out = []

    async def read() -> None:
        async for response in stub.WatchRun(tp.WatchRunRequest(run_id=run_id, after_sequence=after)):
            out.append(response.event)

    await asyncio.wait_for(read(), timeout)
    return out


async def wait_for_event(
    stub: trainer_pb2_grpc.TrainerServiceStub, run_id: str, kind: str, *, timeout: float = 300
) -> tp.RunEvent:
    """The first event of `kind` (metrics, checkpoint, data, log, state)."""

    async def read() -> tp.RunEvent:
        async for response in stub.WatchRun(tp.WatchRunRequest(run_id=run_id)):
            if response.event.WhichOneof("kind") == kind:
                return response.event
        raise AssertionError(f"run {run_id} ended without a {kind} event")

    return await asyncio.wait_for(read(), timeout)


def handle_of(settings: CharterSettings, run_id: str) -> str:
    """The executor's handle of a run's current worker, read from the run store."""
    from charter.api.trainer import run_store

    store = run_store(settings.trainer.database_url.get_secret_value(), run_migrations=False)
    try:
        handle = store.record(run_id).handle
    finally:
        store.close()
    assert handle is not None
    return handle


def kill_worker(settings: CharterSettings, run_id: str, *, with_launcher: bool = False) -> None:
    """SIGKILL the worker of a local run — alone (its launcher shell records the death), or with the
    launcher, as when the whole host goes down."""
    shell = int(handle_of(settings, run_id).split(":")[0])
    children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
    assert children, f"the launcher {shell} has no worker child"
    if with_launcher:
        os.killpg(shell, signal.SIGKILL)
    else:
        os.kill(int(children[0]), signal.SIGKILL)


def metrics_steps(events: list[tp.RunEvent], key: str = "loss") -> list[int]:
    return [e.metrics.step for e in events if e.WhichOneof("kind") == "metrics" and key in e.metrics.values]

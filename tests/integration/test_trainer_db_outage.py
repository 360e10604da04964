"""A database outage does not fail a healthy training run (issue 18, failure behaviour): the trainer
service's run store on PostgreSQL refuses connections (as while it restarts) in the middle of a real
run; the service keeps the worker's events waiting and records them when the database answers again,
and the run ends SUCCEEDED with every step recorded — FAILED ("lost track of the worker") before."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import HH_DEV
from tests.support.review import POSTGRES_ADMIN_URL, postgres_database
from tests.support.tiny import save_tiny_lm
from tests.support.trainer import metrics_steps, run_spec, trainer_service, trainer_settings, wait_for_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, embedded_model) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm", embedded_model)


async def test_a_run_store_outage_pauses_recording_and_the_run_succeeds(tmp_path, tiny_lm):
    spec = run_spec(
        tp.ALGORITHM_REWARD_MODEL, tiny_lm, files=[str(HH_DEV)], per_device_train_batch_size=4,
        learning_rate=1e-3, max_length=96, logging_steps=1, save_steps=4, max_steps=8,
    )  # fmt: skip
    with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)
        try:
            async with trainer_service(trainer_settings(tmp_path, database_url=url)) as stub:
                run = (await stub.StartRun(tp.StartRunRequest(spec=spec))).run
                await wait_for_event(stub, run.id, "metrics", timeout=180)  # training has begun
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                )
                await asyncio.sleep(4)  # the worker goes on; its events cannot be recorded meanwhile
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                for _ in range(600):
                    try:
                        done = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
                    except Exception:  # the service's own reads may still be reconnecting
                        await asyncio.sleep(0.5)
                        continue
                    if done.state in (tp.RUN_STATE_SUCCEEDED, tp.RUN_STATE_FAILED, tp.RUN_STATE_CANCELLED):
                        break
                    await asyncio.sleep(0.5)
                assert done.state == tp.RUN_STATE_SUCCEEDED, done.reason
                assert done.step == 8
                events = []
                async for response in stub.WatchRun(tp.WatchRunRequest(run_id=run.id)):
                    events.append(response.event)
                assert metrics_steps(events) == list(range(1, 9))  # nothing lost, nothing twice
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.close()

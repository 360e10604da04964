"""One live worker per run (issue 18, failure behaviour): two trainer replicas share one PostgreSQL run
store; concurrent StartRun calls with one idempotency key make one run and launch one worker, and of
concurrent ResumeRun calls exactly one resumes it — the others get FAILED_PRECONDITION. Before the
launch claim, every ResumeRun that read the run as cancelled launched its own worker, and concurrent
StartRun calls on two replicas broke the idempotency key's unique index (INTERNAL)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import HH_DEV
from tests.support.review import postgres_database
from tests.support.tiny import save_tiny_lm
from tests.support.trainer import run_spec, trainer_service, trainer_settings, wait_for_event, watch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, embedded_model) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm", embedded_model)


async def _outcomes(calls) -> tuple[list, list[grpc.StatusCode]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, grpc.aio.AioRpcError)]
    assert not others, others
    return ok, codes


async def test_concurrent_start_and_resume_on_two_replicas_launch_one_worker(tmp_path, tiny_lm):
    spec = run_spec(
        tp.ALGORITHM_REWARD_MODEL, tiny_lm, files=[str(HH_DEV)], per_device_train_batch_size=4,
        learning_rate=1e-3, max_length=96, logging_steps=1, save_steps=1000, max_steps=100_000,
    )  # fmt: skip
    with postgres_database() as url:
        settings = trainer_settings(tmp_path, database_url=url)
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(trainer_service(settings))
            b = await stack.enter_async_context(trainer_service(settings))
            request = tp.StartRunRequest(spec=spec, idempotency_key="one-run")
            started, codes = await _outcomes([stub.StartRun(request) for stub in (a, b) * 4])
            assert codes == []
            assert len({r.run.id for r in started}) == 1
            run_id = started[0].run.id
            try:
                await wait_for_event(a, run_id, "metrics", timeout=180)
                assert (await b.GetRun(tp.GetRunRequest(run_id=run_id))).run.attempt == 1

                await a.CancelRun(tp.CancelRunRequest(run_id=run_id, reason="to resume"))
                resumed, codes = await _outcomes(
                    [stub.ResumeRun(tp.ResumeRunRequest(run_id=run_id)) for stub in (a, b) * 4]
                )
                assert len(resumed) == 1, [r.run for r in resumed]
                assert codes == [grpc.StatusCode.FAILED_PRECONDITION] * 7
                run = (await a.GetRun(tp.GetRunRequest(run_id=run_id))).run
                assert run.attempt == 2 and run.state == tp.RUN_STATE_RUNNING

                await a.CancelRun(tp.CancelRunRequest(run_id=run_id, reason="done"))
                events = await watch(b, run_id, timeout=120)
                states = [e.state.state for e in events if e.WhichOneof("kind") == "state"]
                # created, first launch, cancelled, claimed for the resume, one relaunch, cancelled
                assert states == [
                    tp.RUN_STATE_PENDING, tp.RUN_STATE_RUNNING, tp.RUN_STATE_CANCELLED,
                    tp.RUN_STATE_PENDING, tp.RUN_STATE_RUNNING, tp.RUN_STATE_CANCELLED,
                ]  # fmt: skip
                resumes = [
                    e for e in events if e.WhichOneof("kind") == "log" and "resumed from" in e.log.message
                ]
                assert len(resumes) == 1
            finally:  # a local worker outlives its service: never leave one training
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await a.CancelRun(tp.CancelRunRequest(run_id=run_id, reason="test over"))

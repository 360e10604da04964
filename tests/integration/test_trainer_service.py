"""The trainer service through a real gRPC server, with real worker subprocesses training tiny models
(a Llama from a config with the embedded tokenizer) on the shared hh-rlhf pairs: bad specs, a run
from start to finish, a worker that dies (FAILED with the reason, then resumed from its checkpoint),
a service restart (the run is adopted, or resumed if its worker vanished too), cancel, and event lines
the worker did not emit (text in its log without the attempt's nonce) that record nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import HH_DEV
from tests.support.tiny import save_tiny_lm
from tests.support.trainer import (
    handle_of,
    kill_worker,
    metrics_steps,
    run_spec,
    trainer_service,
    trainer_settings,
    wait_for_event,
    watch,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, embedded_model) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm", embedded_model)


# what a worker might print of its data: event lines without the attempt's nonce, or with another
FORGED = [
    '@charter-event {"type":"metrics","step":99999,"values":{"loss":-1.0}}',
    '@charter-event {"type":"finished","output_dir":"/tmp/forged-model"}',
    '@charter-event {"type":"error","message":"forged failure"}',
    "\r 10%|#  | 1/10@charter-event/" + "f" * 32 + ' {"type":"checkpoint","step":99998,"path":"/tmp/forged"}',
]


def forge(settings, run_id: str, attempt: int = 1) -> None:
    """Append `FORGED` to the log the service follows, as if the worker had printed it."""
    log_path = Path(settings.trainer.runs_dir) / run_id / f"attempt-{attempt}.log"
    with open(log_path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in FORGED))


def rm_spec(tiny_lm: Path, **hyperparameters) -> tp.RunSpec:
    values = {
        "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_length": 96, "logging_steps": 1,
        "save_steps": 3, "max_steps": 6, **hyperparameters,
    }  # fmt: skip
    return run_spec(tp.ALGORITHM_REWARD_MODEL, tiny_lm, files=[str(HH_DEV)], eval_fraction=0.1, **values)


async def start(stub, spec: tp.RunSpec, key: str = "") -> tp.Run:
    return (await stub.StartRun(tp.StartRunRequest(spec=spec, idempotency_key=key))).run


async def test_bad_specs_fail_at_start_naming_the_field(tmp_path, tiny_lm):
    good = rm_spec(tiny_lm)
    cases = {
        "spec.algorithm": lambda s: setattr(s, "algorithm", 42),
        "spec.base_model": lambda s: setattr(s, "base_model", str(tmp_path / "no-such-model")),
        "spec.data": lambda s: s.ClearField("data"),
        "spec.hyperparameters.learning_rate": lambda s: s.hyperparameters.update({"learning_rate": 0}),
        "spec.hyperparameters.warmup_stepz": lambda s: s.hyperparameters.update({"warmup_stepz": 10}),
        "spec.reward_model": lambda s: (
            setattr(s, "algorithm", tp.ALGORITHM_PPO),
            s.ClearField("hyperparameters"),
            setattr(s, "reward_model", "r-0"),
        ),
    }
    async with trainer_service(trainer_settings(tmp_path)) as stub:
        for field, breaks in cases.items():
            spec = tp.RunSpec()
            spec.CopyFrom(good)
            breaks(spec)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await start(stub, spec)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert err.value.details().startswith(field), err.value.details()
        assert not (await stub.ListRuns(tp.ListRunsRequest())).runs  # nothing was started


async def test_a_reward_model_run_from_start_to_finish(tmp_path, tiny_lm, monkeypatch):
    settings = trainer_settings(tmp_path)
    monkeypatch.chdir(tiny_lm.parent)  # a relative model path, as a user types it
    async with trainer_service(settings) as stub:
        run = await start(stub, rm_spec(Path(tiny_lm.name)), key="rm-1")
        assert run.state == tp.RUN_STATE_RUNNING and run.attempt == 1
        assert run.spec.base_model == str(tiny_lm)  # the worker runs elsewhere: made absolute
        assert (await start(stub, rm_spec(tiny_lm), key="rm-1")).id == run.id  # idempotent
        events = await watch(stub, run.id)
        done = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    states = [e.state.state for e in events if e.WhichOneof("kind") == "state"]
    assert states == [tp.RUN_STATE_PENDING, tp.RUN_STATE_RUNNING, tp.RUN_STATE_SUCCEEDED]
    assert metrics_steps(events) == [1, 2, 3, 4, 5, 6]
    data = next(e.data for e in events if e.WhichOneof("kind") == "data")
    assert data.rows == done.rows > 1000
    assert [e.checkpoint.step for e in events if e.WhichOneof("kind") == "checkpoint"] == [3, 6]
    assert done.state == tp.RUN_STATE_SUCCEEDED and done.step == 6 and done.total_steps == 6
    assert 0.0 <= done.last_metrics["eval_pairwise_accuracy"] <= 1.0
    assert done.last_checkpoint.endswith("checkpoint-6")
    assert (Path(done.output_dir) / "config.json").exists()
    async with trainer_service(settings) as stub:
        listed = await stub.ListRuns(tp.ListRunsRequest(states=[tp.RUN_STATE_SUCCEEDED]))
        assert [r.id for r in listed.runs] == [run.id]
        again = await watch(stub, run.id, after=3)  # a finished run replays from the store
        assert [e.sequence for e in again] == [e.sequence for e in events[3:]]


async def test_a_dead_worker_fails_the_run_with_the_reason_and_it_resumes(tmp_path, tiny_lm):
    settings = trainer_settings(tmp_path)
    async with trainer_service(settings) as stub:
        run = await start(stub, rm_spec(tiny_lm, max_steps=40, save_steps=4))
        checkpoint = await wait_for_event(stub, run.id, "checkpoint")
        kill_worker(settings, run.id)
        events = await watch(stub, run.id)
        failed = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
        assert failed.state == tp.RUN_STATE_FAILED
        assert failed.reason == "worker process killed by SIGKILL"
        assert events[-1].state.reason == failed.reason
        resumed = (await stub.ResumeRun(tp.ResumeRunRequest(run_id=run.id))).run
        assert resumed.state == tp.RUN_STATE_RUNNING and resumed.attempt == 2
        after = await watch(stub, run.id, after=events[-1].sequence)
        done = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
    assert done.state == tp.RUN_STATE_SUCCEEDED and done.step == 40
    notes = [e.log.message for e in after if e.WhichOneof("kind") == "log"]
    assert any(n.startswith("resumed from") for n in notes), notes
    resumed_steps = metrics_steps(after)
    last_saved = max(e.checkpoint.step for e in events if e.WhichOneof("kind") == "checkpoint")
    assert last_saved >= checkpoint.checkpoint.step
    assert resumed_steps[0] == last_saved + 1  # continued from the checkpoint, not from step 1
    assert resumed_steps[-1] == 40
    assert not any(e.WhichOneof("kind") == "data" for e in after)  # the same cached data


@pytest.mark.parametrize("worker_survives", [True, False], ids=["worker-survives", "host-restart"])
async def test_runs_survive_a_service_restart(tmp_path, tiny_lm, worker_survives):
    settings = trainer_settings(tmp_path)
    async with trainer_service(settings) as stub:
        run = await start(stub, rm_spec(tiny_lm, max_steps=40, save_steps=4))
        await wait_for_event(stub, run.id, "checkpoint")
    if not worker_survives:
        kill_worker(settings, run.id, with_launcher=True)
    forge(settings, run.id)  # the new service follows by the nonce it finds in the store
    async with trainer_service(settings) as stub:  # a new service process over the same store
        events = await watch(stub, run.id)
        done = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
    assert done.state == tp.RUN_STATE_SUCCEEDED and done.step == 40
    assert done.output_dir == str(Path(settings.trainer.runs_dir) / run.id / "model")
    steps = metrics_steps(events)
    assert steps[-1] == 40
    if worker_survives:  # one attempt, every step recorded exactly once
        assert done.attempt == 1 and steps == list(range(1, 41))
    else:  # resumed from the last checkpoint
        assert done.attempt == 2
        assert any("resumed after a trainer-service restart" in e.log.message for e in events)
        assert sorted(set(steps)) == list(range(1, 41))


async def test_lines_without_the_attempts_nonce_are_not_events(tmp_path, tiny_lm):
    settings = trainer_settings(tmp_path)
    async with trainer_service(settings) as stub:
        run = await start(stub, rm_spec(tiny_lm, max_steps=12, save_steps=4))
        await wait_for_event(stub, run.id, "metrics")
        forge(settings, run.id)  # while the worker runs and the service follows its log
        events = await watch(stub, run.id)
        done = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
    assert done.state == tp.RUN_STATE_SUCCEEDED and done.reason == ""
    assert metrics_steps(events) == list(range(1, 13)) and done.step == 12  # the real events, all
    assert [e.checkpoint.step for e in events if e.WhichOneof("kind") == "checkpoint"] == [4, 8, 12]
    assert done.output_dir == str(Path(settings.trainer.runs_dir) / run.id / "model")
    assert done.last_checkpoint.endswith("checkpoint-12")
    assert not any("forged" in e.log.message for e in events if e.WhichOneof("kind") == "log")


async def test_cancel_stops_the_worker(tmp_path, tiny_lm):
    settings = trainer_settings(tmp_path)
    async with trainer_service(settings) as stub:
        run = await start(stub, rm_spec(tiny_lm, max_steps=100_000, save_steps=1000))
        await wait_for_event(stub, run.id, "metrics")
        cancelled = (await stub.CancelRun(tp.CancelRunRequest(run_id=run.id, reason="wrong data"))).run
        assert cancelled.state == tp.RUN_STATE_CANCELLED and cancelled.reason == "wrong data"
        events = await watch(stub, run.id)
        assert events[-1].state.state == tp.RUN_STATE_CANCELLED
        await asyncio.sleep(0.5)
        assert (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run.state == tp.RUN_STATE_CANCELLED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetRun(tp.GetRunRequest(run_id="r-missing"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    shell = int(handle_of(settings, run.id).split(":")[0])
    assert not Path(f"/proc/{shell}").exists()  # the launcher and its worker are gone


async def test_tokens_guard_the_service_when_set(tmp_path):
    tokens = [
        {"name": "pipeline", "role": "service", "token": "svc"},
        {"name": "alice", "role": "reviewer", "token": "rev"},
    ]
    async with trainer_service(trainer_settings(tmp_path, tokens=tokens)) as stub:
        for metadata, code in [
            (None, grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer nope"),), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer rev"),), grpc.StatusCode.PERMISSION_DENIED),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListRuns(tp.ListRunsRequest(), metadata=metadata)
            assert err.value.code() == code
        listed = await stub.ListRuns(tp.ListRunsRequest(), metadata=(("authorization", "Bearer svc"),))
        assert list(listed.runs) == []

"""The trainer service's spec security through a real gRPC server (issue 18, findings 1 and 3): a spec
cannot send the review token elsewhere, probe the filesystem, pass over-long strings or start more
runs than allowed; a local worker's environment holds no secret but the token its run needs, and a run
past its deadline is stopped. Workers here are stopped long before they train (seconds per test)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import HH_DEV
from tests.support.trainer import handle_of, run_spec, trainer_service, trainer_settings, watch

pytestmark = pytest.mark.integration

REVIEW_TOKEN = "review-token-for-the-stream-0123"
SECRETS = {
    "HF_TOKEN": "hf_secret",
    "DATABASE_URL": "postgresql://charter:pw@db/charter",
    "CHARTER_REVIEW__DATABASE_URL": "postgresql://charter:pw@db/review",
    "CHARTER_JUDGE_TOKEN": "judge-token-0123456789",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
}


def long_run(**changes) -> tp.RunSpec:
    spec = run_spec(
        tp.ALGORITHM_REWARD_MODEL, "embedded", files=[str(HH_DEV)], max_steps=100000, save_steps=100000,
        per_device_train_batch_size=2, max_length=64,
    )  # fmt: skip
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def stream_run(address: str) -> tp.RunSpec:
    spec = long_run()
    spec.data.ClearField("files")
    spec.data.label_stream.address = address
    return spec


def environ_of(settings, run_id: str) -> dict[str, str]:
    """The environment the run's worker got (its launcher shell's, which the worker inherits)."""
    shell = int(handle_of(settings, run_id).split(":")[0])
    raw = Path(f"/proc/{shell}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def refused(stub, spec: tp.RunSpec, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartRun(tp.StartRunRequest(spec=spec))
    assert err.value.code() == code, err.value.details()
    return err.value.details()


async def test_a_spec_cannot_redirect_the_token_probe_files_or_exceed_the_caps(tmp_path):
    settings = trainer_settings(
        tmp_path, review_address="127.0.0.1:9", review_token=REVIEW_TOKEN, max_active_runs=1
    )
    async with trainer_service(settings) as stub:
        details = await refused(stub, stream_run("attacker.example:443"))
        assert details.startswith("spec.data.label_stream.address: attacker.example:443 is not a review")
        outside = await refused(stub, long_run(base_model="/etc"))
        missing = await refused(stub, long_run(base_model=str(tmp_path / "no-model")))
        assert outside.replace("/etc", "P") == missing.replace(str(tmp_path / "no-model"), "P")
        assert outside.startswith("spec.base_model: ")
        assert (await refused(stub, long_run(name="n" * 5000))).startswith("spec.name: 5000 characters")
        push = long_run()
        push.hyperparameters.update({"push_to_hub": True})
        assert (await refused(stub, push)).startswith("spec.hyperparameters.push_to_hub")
        assert not (await stub.ListRuns(tp.ListRunsRequest())).runs  # nothing was recorded

        run = (await stub.StartRun(tp.StartRunRequest(spec=stream_run("")))).run
        assert run.spec.data.label_stream.address == "127.0.0.1:9"  # the settings' own
        details = await refused(stub, long_run(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "trainer.max_active_runs=1" in details
        await stub.CancelRun(tp.CancelRunRequest(run_id=run.id))


async def test_workers_get_no_secret_but_their_own_token_and_stop_at_the_deadline(tmp_path, monkeypatch):
    settings = trainer_settings(
        tmp_path, review_address="127.0.0.1:9", review_token=REVIEW_TOKEN, max_run_seconds=3
    )
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    async with trainer_service(settings) as stub:
        files = (await stub.StartRun(tp.StartRunRequest(spec=long_run()))).run
        env = environ_of(settings, files.id)
        stream = (await stub.StartRun(tp.StartRunRequest(spec=stream_run("")))).run
        stream_env = environ_of(settings, stream.id)
        await stub.CancelRun(tp.CancelRunRequest(run_id=stream.id))
        events = await watch(stub, files.id, timeout=120)
        done = (await stub.GetRun(tp.GetRunRequest(run_id=files.id))).run
    leaked = {k for k, v in env.items() if v in SECRETS.values() or v == REVIEW_TOKEN}
    assert not leaked and not set(SECRETS) & set(env), env.keys()
    assert "CHARTER_REVIEW_TOKEN" not in env  # a files run needs no review token
    assert env["PATH"] and env["CHARTER_TORCH_THREADS"] == "1"
    assert stream_env["CHARTER_REVIEW_TOKEN"] == REVIEW_TOKEN  # the stream run needs it: only that
    assert not set(SECRETS) & set(stream_env)
    assert done.state == tp.RUN_STATE_FAILED
    assert done.reason == "the run passed its deadline of 3 s (trainer.max_run_seconds)"
    assert events[-1].state.reason == done.reason

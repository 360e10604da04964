"""Continuous runs through a real review service (SQLite ledger) and a real trainer service whose
workers train tiny models: a DPO run trains round after round while labels arrive, its worker is
killed in the middle of a round and the resumed run uses no label twice (the recorded cursor ranges
and the rows each round trained on), and a generator following it serves its latest round (and
SwapModel names a round exactly); a
continuous reward-model run goes on through a trainer-service restart, is stopped by CancelRun, and
PPO takes its latest round as reward model (`ID@N` and `run:ID@N` name rounds elsewhere)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import grpc
import pytest
from charter.api.common import conversation_proto
from charter.app.local import local_services
from charter.app.trainer_runs import model_folder
from charter.client.generator import GeneratorClient
from charter.core.settings import load_settings
from charter.inference.types import Message
from charter_proto.common.v1 import sampling_pb2
from charter_proto.generator.v1 import generator_pb2
from charter_proto.review.v1 import review_pb2 as rv
from charter_proto.review.v1 import review_pb2_grpc
from charter_proto.trainer.v1 import trainer_pb2 as tp
from charter_proto.trainer.v1 import trainer_pb2_grpc

from tests.support import ROOT, subprocess_env, tool
from tests.support.hh import HH_DEV, load_pairs
from tests.support.review import hh_label
from tests.support.tiny import save_tiny_lm
from tests.support.trainer import (
    kill_worker,
    metrics_steps,
    run_spec,
    serving,
    trainer_settings,
    wait_for_event,
    watch,
)

pytestmark = pytest.mark.integration

TOKEN = "svc-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
# short pairs (TRL's DPO drops a row whose prompt fills max_length), accepted on arrival: sequences
# 1..12 in submission order
SHORT = [p for p in load_pairs(400) if len(p.prefix) < 150 and max(len(p.chosen), len(p.rejected)) < 150]
LABELS = [hh_label(pair, i, confidence=0.9) for i, pair in enumerate(SHORT[:12])]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, embedded_model) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm", embedded_model)


@pytest.fixture
async def review(tmp_path):
    settings = load_settings(
        review={
            "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "tokens": [{"name": "trainer", "role": "service", "token": TOKEN}],
            "web_port": None,
            "poll_seconds": 0.05,
            "routing": {"audit_rate": 0.0},
        }
    )
    async with serving("review", settings) as (channel, port):
        yield review_pb2_grpc.ReviewServiceStub(channel), f"127.0.0.1:{port}"


async def submit(ledger, start: int, end: int) -> None:
    await ledger.Submit(rv.SubmitRequest(labels=LABELS[start:end]), metadata=AUTH)


def continuous_spec(algorithm: int, lm: Path, *, round_labels: int, max_rounds: int = 0, **hp) -> tp.RunSpec:
    spec = run_spec(
        algorithm, lm, name="continuous", per_device_train_batch_size=2, learning_rate=1e-3, max_length=128,
        logging_steps=1, **hp,
    )  # fmt: skip
    spec.data.label_stream.from_cursor.sequence = 0
    spec.continuous.CopyFrom(
        tp.ContinuousTraining(round_labels=round_labels, round_seconds=120, max_rounds=max_rounds)
    )
    return spec


def trained_on(model_dir: str) -> list[str]:
    """The label ids a round trained on: its cached rows (beside its model folder)."""
    rows = (Path(model_dir).parent / "data" / "rows.jsonl").read_text().splitlines()
    return [json.loads(r)["label_id"] for r in rows]


def of_kind(events: list[tp.RunEvent], kind: str) -> list:
    return [getattr(e, kind) for e in events if e.WhichOneof("kind") == kind]


async def follow_and_swap(lm: Path, trainer: str, run_id: str) -> list[sampling_pb2.ModelRef]:
    """A generator (started on `lm`) that follows the continuous run named "continuous": the model of
    its reply once it serves round 3, then of its SwapModel to `run:ID@1` and to `run:ID@latest`."""
    settings = load_settings(
        inference={"engine": "transformers", "model": str(lm), "dtype": "float32", "threads": 1,
                   "max_model_len": 256},
        generator={"follow_run_name": "continuous", "trainer_address": trainer, "follow_poll_seconds": 0.05},
    )  # fmt: skip
    prompt = conversation_proto([Message(role="user", content="Say something.")], "p0")
    request = generator_pb2.GenerateRequest(
        prompts=[prompt], sampling=sampling_pb2.SamplingParams(max_tokens=4)
    )
    async with (
        local_services(settings, ["generator"]) as address,
        GeneratorClient(address, timeout=60) as client,
    ):
        for _ in range(600):
            [reply] = await client.generate(request)
            if reply.model.policy_version.startswith(f"run:{run_id}@3@"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"never served round 3; last {reply.model.policy_version}")
        first = await client.swap_model(f"run:{run_id}@1")
        latest = await client.swap_model(f"run:{run_id}@latest")
    return [reply.model, first.model, latest.model]


async def test_a_continuous_dpo_run_killed_mid_round_resumes_without_using_a_label_twice(
    tmp_path, tiny_lm, review
):
    ledger, address = review
    settings = trainer_settings(tmp_path, review_address=address, review_token=TOKEN)
    await submit(ledger, 0, 6)  # round 1 closes at 4 labels; 5 and 6 wait for round 2
    spec = continuous_spec(tp.ALGORITHM_DPO, tiny_lm, round_labels=4, max_rounds=3, beta=0.1,
                           max_steps=10, save_steps=2)  # fmt: skip
    async with serving("trainer", settings) as (channel, port):
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        run = (await stub.StartRun(tp.StartRunRequest(spec=spec))).run
        first = (await wait_for_event(stub, run.id, "round")).round
        assert (first.round, first.cursor_start.sequence, first.cursor_end.sequence) == (1, 0, 4)
        await submit(ledger, 6, 10)  # labels arrive while the run trains: round 2 closes at cursor 8

        async def mid_round_two() -> tp.RunEvent:
            async for response in stub.WatchRun(tp.WatchRunRequest(run_id=run.id)):
                if response.event.checkpoint.step > first.step:
                    return response.event
            raise AssertionError("the run ended before round 2 saved a checkpoint")

        saved = await mid_round_two()
        kill_worker(settings, run.id)
        events = await watch(stub, run.id)
        failed = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
        assert failed.state == tp.RUN_STATE_FAILED and failed.latest_round == 1, failed.reason
        assert [r.round for r in (await stub.ListRounds(tp.ListRoundsRequest(run_id=run.id))).rounds] == [1]

        await stub.ResumeRun(tp.ResumeRunRequest(run_id=run.id))
        await submit(ledger, 10, 12)  # round 3: labels 9..12
        after = await watch(stub, run.id, after=events[-1].sequence)
        done = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
        rounds = list((await stub.ListRounds(tp.ListRoundsRequest(run_id=run.id))).rounds)
        everything = events + after
        served = await follow_and_swap(tiny_lm, f"127.0.0.1:{port}", run.id)
    # the generator serves the latest round, and names every round it serves exactly
    assert [m.name for m in served] == [f"run:{run.id}@3", f"run:{run.id}@1", f"run:{run.id}@3"]
    assert served[0].policy_version == served[2].policy_version != served[1].policy_version
    assert done.state == tp.RUN_STATE_SUCCEEDED and done.attempt == 2, done.reason
    ranges = [(r.round, r.cursor_start.sequence, r.cursor_end.sequence, r.rows) for r in rounds]
    assert ranges == [(1, 0, 4, 4), (2, 4, 8, 4), (3, 8, 12, 4)]
    assert (done.cursor_start.sequence, done.cursor_end.sequence, done.latest_round) == (0, 12, 3)
    assert done.output_dir == rounds[-1].model_dir  # the run's model is its last round's
    # each round published once although the resumed worker reported round 1 again
    assert [r.round for r in of_kind(everything, "round")] == [1, 2, 3]
    # round 2's labels were read once, by the killed attempt; the resumed one trained on its cache
    assert [(d.round, d.cursor_start.sequence, d.cursor_end.sequence) for d in of_kind(everything, "data")] == [
        (1, 0, 4), (2, 4, 8), (3, 8, 12)]  # fmt: skip
    used = [trained_on(r.model_dir) for r in rounds]
    assert used == [[label.id for label in LABELS[i : i + 4]] for i in (0, 4, 8)]  # each label once
    notes = [m.message for m in of_kind(after, "log")]
    assert any(n.startswith("round 2: resuming from") for n in notes), notes
    resumed = metrics_steps(after)
    assert resumed[0] > saved.checkpoint.step >= first.step  # round 2 went on from its checkpoint
    assert rounds[-1].step == resumed[-1] == 3 * 10
    weights = [(Path(r.model_dir) / "model.safetensors").read_bytes() for r in rounds]
    assert len(set(weights)) == 3  # every round trained the model further


async def test_a_continuous_reward_model_run_feeds_ppo_by_its_latest_round(tmp_path, tiny_lm, review):
    ledger, address = review
    settings = trainer_settings(tmp_path, review_address=address, review_token=TOKEN)
    await submit(ledger, 0, 4)
    spec = continuous_spec(tp.ALGORITHM_REWARD_MODEL, tiny_lm, round_labels=4, max_steps=2, save_steps=1000)

    async def published(stub, run_id: str, n: int) -> list[tp.Round]:
        async for response in stub.WatchRun(tp.WatchRunRequest(run_id=run_id)):
            if response.event.round.round == n:
                return list((await stub.ListRounds(tp.ListRoundsRequest(run_id=run_id))).rounds)
        raise AssertionError(f"the run ended before round {n}")

    async with serving("trainer", settings) as (channel, _):
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        rm = (await stub.StartRun(tp.StartRunRequest(spec=spec))).run
        await published(stub, rm.id, 1)
    # the trainer service is down while the worker waits for round 2's labels, and they come
    await submit(ledger, 4, 8)
    async with serving("trainer", settings) as (channel, port):  # a new service adopts the worker
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        rounds = await published(stub, rm.id, 2)
        # no max_rounds: it waits for more labels until cancelled; its rounds stay published
        cancelled = (await stub.CancelRun(tp.CancelRunRequest(run_id=rm.id, reason="enough"))).run
        assert cancelled.state == tp.RUN_STATE_CANCELLED and cancelled.attempt == 1
        assert [r.round for r in of_kind(await watch(stub, rm.id), "round")] == [1, 2]  # each once
        assert [(r.cursor_start.sequence, r.cursor_end.sequence) for r in rounds] == [(0, 4), (4, 8)]
        for r in rounds:
            assert (Path(r.model_dir) / "config.json").exists()

        ppo = run_spec(tp.ALGORITHM_PPO, tiny_lm, files=[str(HH_DEV)], reward_model=f"{rm.id}@latest",
                       name="ppo", total_steps=1, save_steps=1, rollout_batch_size=4, mini_batch_size=2,
                       ppo_epochs=1, max_new_tokens=4, max_prompt_length=48, learning_rate=1e-4)  # fmt: skip
        started = (await stub.StartRun(tp.StartRunRequest(spec=ppo))).run
        assert started.spec.reward_model == rounds[-1].model_dir  # "latest round of run X", resolved
        await watch(stub, started.id)
        trained = (await stub.GetRun(tp.GetRunRequest(run_id=started.id))).run
        assert trained.state == tp.RUN_STATE_SUCCEEDED, trained.reason

        grpo = run_spec(tp.ALGORITHM_GRPO, tiny_lm, files=[str(HH_DEV)], reward_model=f"{rm.id}@1",
                        name="grpo", max_steps=1)  # fmt: skip
        named = (await stub.StartRun(tp.StartRunRequest(spec=grpo, idempotency_key="g"))).run
        assert named.spec.reward_model == rounds[0].model_dir
        await stub.CancelRun(tp.CancelRunRequest(run_id=named.id))
        for bad, says in ((f"{rm.id}@3", "has no round 3"), (f"{rm.id}@last", "a round is a number")):
            grpo.reward_model = bad
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.StartRun(tp.StartRunRequest(spec=grpo))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("spec.reward_model") and says in err.value.details()

        # other parts name a round as run:ID@N, run:ID@latest or run:ID (its latest), through the
        # trainer service or straight from the run store
        for where in (f"127.0.0.1:{port}", None):
            for ref, expected in (("@1", rounds[0]), ("@latest", rounds[1]), ("", rounds[1])):
                folder = await model_folder(f"run:{rm.id}{ref}", settings, address=where, field="model")
                assert folder == expected.model_dir, (where, ref)

    # `charter runs rounds` lists them from the run store
    config = tmp_path / "settings.yaml"
    config.write_text(f"trainer:\n  database_url: sqlite:///{tmp_path / 'trainer.db'}\n")
    listed = subprocess.run([tool("charter"), "runs", "rounds", rm.id, "-c", str(config)], cwd=ROOT,
                            capture_output=True, text=True, env=subprocess_env(), timeout=120)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [
        [f"run:{rm.id}@1", "labels"], [f"run:{rm.id}@2", "labels"]]  # fmt: skip
    assert f"labels 4..8  4 rows  step 4  {rounds[1].model_dir}" in listed.stdout


async def test_a_round_whose_rows_are_all_too_long_is_read_again_until_one_fits(tmp_path, tiny_lm, review):
    """TRL drops reward-model rows longer than max_length: a round closed on such rows only used to
    crash the worker (no samples), and every resume crashed again on the cached rows."""
    ledger, address = review
    settings = trainer_settings(tmp_path, review_address=address, review_token=TOKEN)
    long = next(p for p in load_pairs(400) if len(p.prefix) + min(len(p.chosen), len(p.rejected)) > 2000)
    await ledger.Submit(
        rv.SubmitRequest(labels=[hh_label(long, 0, confidence=0.9, label_id="long")]), metadata=AUTH
    )
    spec = continuous_spec(tp.ALGORITHM_REWARD_MODEL, tiny_lm, round_labels=1, max_rounds=1, max_steps=1,
                           save_steps=1000)  # fmt: skip
    async with serving("trainer", settings) as (channel, _):
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        run = (await stub.StartRun(tp.StartRunRequest(spec=spec))).run
        await wait_for_event(stub, run.id, "data")  # round 1 read: the long row alone
        await submit(ledger, 0, 1)  # a short one: round 1 is read again with both
        events = await watch(stub, run.id)
        done = (await stub.GetRun(tp.GetRunRequest(run_id=run.id))).run
        rounds = list((await stub.ListRounds(tp.ListRoundsRequest(run_id=run.id))).rounds)
    assert done.state == tp.RUN_STATE_SUCCEEDED and done.attempt == 1, done.reason
    assert [(r.round, r.cursor_start.sequence, r.cursor_end.sequence, r.rows) for r in rounds] == [
        (1, 0, 2, 2)
    ]
    assert trained_on(rounds[0].model_dir) == ["long", LABELS[0].id]
    notes = [m.message for m in of_kind(events, "log")]
    assert any(n.startswith("round 1: none of its 1 rows") for n in notes), notes

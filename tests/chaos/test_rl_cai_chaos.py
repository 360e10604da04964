"""Chaos: the RL-CAI pipeline labels pairs through a judge service into the review service (PostgreSQL),
a person decides the queued labels, `charter export --follow` and a stream-fed continuous trainer run
read the accepted stream — while a seeded schedule SIGKILLs the pipeline, the judge, the review
service, the follower, the trainer service and its worker (each restarted, as a supervisor would) and
crashes PostgreSQL twice in the middle of a Submit, with both followers streaming.

Invariants at the end: every pair labelled once (one label per pair in the ledger and in the pipeline's
output), every accepted label delivered once and in order to the follower, every usable one trained
on exactly once in contiguous rounds, and the counts agree."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from charter.inference.models import prepare
from charter_proto.review.v1 import review_pb2 as rv
from charter_proto.review.v1 import review_pb2_grpc
from charter_proto.trainer.v1 import trainer_pb2 as tp
from charter_proto.trainer.v1 import trainer_pb2_grpc

from tests.chaos.postgres import Cluster
from tests.chaos.processes import Supervised, free_port, worker_pids
from tests.chaos.processes import call as call_with
from tests.support import ROOT, subprocess_env, tool
from tests.support.hh import HH_DEV
from tests.support.tiny import save_tiny_lm
from tests.support.trainer import roots_for, run_spec

pytestmark = pytest.mark.e2e

SEED = 20261206
PAIRS = 240
ROUND_LABELS = 32
SERVICE = (("authorization", "Bearer chaos-service-token-0123"),)
REVIEWER = (("authorization", "Bearer chaos-reviewer-token-0123"),)


def call(fn, request, metadata=SERVICE):
    return call_with(fn, request, metadata)


# the faults: SIGKILL of each process (restarted after), a PostgreSQL crash in the middle of a Submit
DURING_PIPELINE = ["postgres", "postgres", "pipeline", "pipeline", "judge", "review", "consumer", "trainer"]
AFTER_ANY = ["worker", "worker", "consumer", "review", "trainer"]


def service_config(folder: Path, name: str, port: int, section: str, body: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    settings = {
        "server": {"host": "127.0.0.1", "port": port, "metrics_port": None, "drain_seconds": 0,
                   "health_probe_seconds": 1},
        "logging": {"format": "json", "level": "INFO"},
        "constitutions": {"directory": str(ROOT / "constitutions")},
        section: body,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(settings))
    return path


class Chaos:
    def __init__(self, tmp: Path, cluster: Cluster, tiny_lm: Path) -> None:
        self.tmp, self.cluster, self.tiny_lm = tmp, cluster, tiny_lm
        self.rng = random.Random(SEED)
        self.ports = {name: free_port() for name in ("review", "judge", "trainer")}
        self.review_address = f"127.0.0.1:{self.ports['review']}"
        tokens = [
            {"name": "pipeline", "role": "service", "token": SERVICE[0][1].split()[1]},
            {"name": "rita", "role": "reviewer", "token": REVIEWER[0][1].split()[1]},
        ]
        review = service_config(tmp, "review", self.ports["review"], "review", {
            "database_url": cluster.database("ledger"), "web_port": None, "poll_seconds": 0.1,
            "routing": {"audit_rate": 0.0}, "tokens": tokens,
        })  # fmt: skip
        judge = service_config(tmp, "judge", self.ports["judge"], "judge", {"logit_scale": 1.0})
        trainer = service_config(tmp, "trainer", self.ports["trainer"], "trainer", {
            "database_url": cluster.database("trainer"), "runs_dir": str(tmp / "runs"), "worker_threads": 1,
            "poll_seconds": 0.1, "allowed_roots": roots_for(tmp), "review_address": self.review_address,
            "review_token": SERVICE[0][1].split()[1], "auto_resume": True,
        })  # fmt: skip
        (tmp / "svc.token").write_text(SERVICE[0][1].split()[1])
        spec = tmp / "rl-cai.yaml"
        spec.write_text(yaml.safe_dump({
            "kind": "rl-cai", "name": "chaos", "output": str(tmp / "out"), "seed": SEED,
            "pairs": {"kind": "file", "path": str(HH_DEV), "format": "hh-rlhf", "limit": PAIRS},
            "constitution": "harmless", "batch_size": 4,
            "services": {"mode": "remote", "judge": f"127.0.0.1:{self.ports['judge']}", "retries": 3,
                         "backoff_seconds": 0.5, "timeout_seconds": 60},
            "ledger": {"address": self.review_address, "token_file": str(tmp / "svc.token")},
            "constitutions_dir": str(ROOT / "constitutions"),
        }))  # fmt: skip
        env = subprocess_env(CHARTER_LOGGING__FORMAT="json", OMP_NUM_THREADS="1")
        charter = tool("charter")
        self.stream = tmp / "stream.jsonl"
        self.procs = {
            "review": Supervised("review", [charter, "serve", "review", "-c", str(review)], "server.started", env),
            "judge": Supervised("judge", [sys.executable, "-m", "tests.chaos.judge_server", str(judge)],
                                "server.started", env),
            "trainer": Supervised("trainer", [charter, "serve", "trainer", "-c", str(trainer)], "server.started",
                                  env),
            "consumer": Supervised("consumer", [charter, "export", "--review", self.review_address, "--token",
                                                SERVICE[0][1].split()[1], "--format", "jsonl", "--out",
                                                str(self.stream), "--follow"], None, env),
            "pipeline": Supervised("pipeline", [charter, "run", str(spec)], None, env),
        }  # fmt: skip
        self.review_channel = grpc.insecure_channel(self.review_address)
        self.review = review_pb2_grpc.ReviewServiceStub(self.review_channel)
        self.trainer_channel = grpc.insecure_channel(f"127.0.0.1:{self.ports['trainer']}")
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self.trainer_channel)
        self.faults: list[dict[str, Any]] = []
        self.pipeline_done = False
        self.pipeline_failures: list[str] = []
        self.decided = 0
        self.run_id = ""

    # ----------------------------------------------------------------- the system
    def start(self) -> None:
        for name in ("review", "judge", "trainer", "consumer"):
            self.procs[name].start()
        spec = run_spec(
            tp.ALGORITHM_REWARD_MODEL, self.tiny_lm, name="chaos", per_device_train_batch_size=4,
            learning_rate=1e-3, max_length=128, logging_steps=1, max_steps=2, save_steps=1,
        )  # fmt: skip
        spec.data.label_stream.from_cursor.sequence = 0
        spec.continuous.CopyFrom(tp.ContinuousTraining(round_labels=ROUND_LABELS, round_seconds=3))
        self.run_id = call(
            self.trainer.StartRun, tp.StartRunRequest(spec=spec, idempotency_key="chaos")
        ).run.id
        self.procs["pipeline"].start()

    def tend(self) -> None:
        """What the operator does between faults: restart a pipeline that stopped with an error (it
        resumes), resume a failed training run, and decide a few queued labels."""
        pipeline = self.procs["pipeline"]
        if not self.pipeline_done and not pipeline.running():
            code = pipeline.proc.proc.returncode
            if code == 0:
                self.pipeline_done = True
            else:
                if code != -signal.SIGKILL:
                    self.pipeline_failures.append("".join(pipeline.proc.raw)[-400:])
                pipeline.start()
        run = call(self.trainer.GetRun, tp.GetRunRequest(run_id=self.run_id)).run
        if run.state == tp.RUN_STATE_FAILED:
            with contextlib.suppress(grpc.RpcError):  # another resume (auto_resume) may have won
                call(self.trainer.ResumeRun, tp.ResumeRunRequest(run_id=self.run_id))
        for _ in range(self.rng.randint(0, 6)):
            if not self.decide_one():
                break

    def decide_one(self) -> bool:
        item = call(self.review.Claim, rv.ClaimRequest(), REVIEWER).item
        if not item.item_id:
            return False
        choice = rv.HUMAN_CHOICE_A if self.rng.random() < 0.5 else rv.HUMAN_CHOICE_B
        try:
            call(self.review.Decide, rv.DecideRequest(item_id=item.item_id, lease_id=item.lease_id, choice=choice),
                 REVIEWER)  # fmt: skip
        except grpc.RpcError as err:
            # a Decide that committed before a restart cut its answer: the retry finds the lease used
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        self.decided += 1
        return True

    # ----------------------------------------------------------------- the faults
    def fault(self, kind: str) -> None:
        record: dict[str, Any] = {"kind": kind, "pipeline_running": self.procs["pipeline"].running()}
        if kind == "postgres":
            record.update(self.crash_postgres_mid_submit())
        elif kind == "worker":
            deadline = time.monotonic() + 60
            while not (pids := worker_pids(self.run_id)) and time.monotonic() < deadline:
                self.tend()  # the run may wait for its resume
                time.sleep(0.5)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            record["killed"] = len(pids)
        else:
            proc = self.procs[kind]
            record["killed"] = int(proc.running())
            proc.kill()
            if kind != "pipeline":  # the pipeline is restarted by `tend`, as an operator would rerun it
                time.sleep(self.rng.uniform(0.0, 1.0))
                proc.start()
        self.faults.append(record)

    def crash_postgres_mid_submit(self) -> dict[str, Any]:
        """Hold a lock the next Submit needs, wait until the review service's transaction waits on it (it
        has begun and written), then crash the server: the Submit is cut mid-transaction."""
        import psycopg

        mid_submit = False
        hold = psycopg.connect(self.cluster.url("ledger"), autocommit=False)
        watch = psycopg.connect(self.cluster.url("ledger"), autocommit=True)
        try:
            hold.execute("LOCK TABLE labels IN SHARE ROW EXCLUSIVE MODE")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not mid_submit:
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query ILIKE '%INSERT INTO labels%'"
                ).fetchone()
                mid_submit = bool(waiting and waiting[0])
                time.sleep(0.02)
            streaming = self.procs["consumer"].running()
            self.cluster.restart(self.rng.uniform(0.5, 2.0))
        finally:
            for connection in (hold, watch):  # both cut by the crash
                with contextlib.suppress(psycopg.Error):
                    connection.close()
        return {"mid_submit": mid_submit, "consumer_streaming": streaming}

    # ----------------------------------------------------------------- the end
    def finish(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not self.pipeline_done:
            assert time.monotonic() < deadline, f"the pipeline did not finish: {self.pipeline_failures}"
            self.tend()
            time.sleep(0.5)
        while self.decide_one():
            assert time.monotonic() < deadline
        self.last = call(self.review.Stats, rv.StatsRequest()).last_cursor.sequence

    def delivered(self) -> list[dict]:
        text = self.stream.read_text(encoding="utf-8") if self.stream.exists() else ""
        lines = text.splitlines()[: text.count("\n")]  # not a line the follower is still writing
        return [json.loads(line) for line in lines if line.strip()]

    def wait_delivered(self, timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.delivered()
            if records and records[-1]["sequence"] >= self.last:
                return records
            time.sleep(0.3)
        raise AssertionError(
            f"the follower stopped at {records[-1]['sequence'] if records else 0} of {self.last}"
        )

    def rounds(self) -> list[tp.Round]:
        return list(call(self.trainer.ListRounds, tp.ListRoundsRequest(run_id=self.run_id)).rounds)

    def wait_trained(self, usable: set[str], timeout: float = 240) -> list[tp.Round]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tend()
            rounds = self.rounds()
            trained = {label for r in rounds for label in trained_on(r)}
            if usable <= trained:
                return rounds
            time.sleep(1.0)
        raise AssertionError(f"{len(usable - trained)} usable labels never trained on; rounds {rounds}")

    def close(self) -> None:
        if self.run_id:
            with contextlib.suppress(Exception):
                self.trainer.CancelRun(tp.CancelRunRequest(run_id=self.run_id), metadata=SERVICE, timeout=10)
            for pid in worker_pids(self.run_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.stop()
        self.review_channel.close()
        self.trainer_channel.close()


def trained_on(round_: tp.Round) -> list[str]:
    rows = Path(round_.model_dir).parent / "data" / "rows.jsonl"
    return [json.loads(line)["label_id"] for line in rows.read_text().splitlines()]


@pytest.fixture
def cluster():
    cluster = Cluster()
    cluster.start()
    yield cluster
    cluster.close()


@pytest.mark.timeout(900)
def test_rl_cai_to_training_survives_kills_and_database_crashes(tmp_path: Path, cluster: Cluster) -> None:
    tiny_lm = save_tiny_lm(tmp_path / "lm", prepare())
    chaos = Chaos(tmp_path, cluster, tiny_lm)
    rng = random.Random(SEED)
    during, after = list(DURING_PIPELINE), list(AFTER_ANY)
    rng.shuffle(during)
    rng.shuffle(after)
    try:
        chaos.start()
        for kind in during + after:
            time.sleep(rng.uniform(0.5, 2.0))
            chaos.tend()
            chaos.fault(kind)
        chaos.finish()
        records = chaos.wait_delivered()
        usable = {r["label_id"] for r in records if r["choice"] in ("A", "B")}
        rounds = chaos.wait_trained(usable)
        ledger = call(chaos.review.Stats, rv.StatsRequest())
    finally:
        chaos.close()
    print(json.dumps({"faults": chaos.faults, "starts": {k: p.starts for k, p in chaos.procs.items()},
                      "pipeline_failures": len(chaos.pipeline_failures), "decided": chaos.decided,
                      "postgres_restarts": cluster.restarts, "delivered": len(records), "rounds": len(rounds)}))  # fmt: skip

    assert all(f["pipeline_running"] for f in chaos.faults[: len(during)]), chaos.faults
    kills = [f for f in chaos.faults if f["kind"] != "postgres" and f.get("killed")]
    assert len(kills) >= 10, chaos.faults
    crashes = [f for f in chaos.faults if f["kind"] == "postgres"]
    assert cluster.restarts == 2 and any(f["mid_submit"] for f in crashes), crashes
    assert all(f["consumer_streaming"] for f in crashes)

    # every pair labelled once: one preference row per pair, one ledger label per pair
    out = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    errors = (tmp_path / "out" / "errors.jsonl").read_text().splitlines()  # source rows that are no pair
    keys, label_ids = [r["key"] for r in out], {r["label"]["id"] for r in out}
    assert len(keys) + len(errors) == PAIRS and len(set(keys)) == len(keys) == len(label_ids)
    assert ledger.labels_total == len(keys)
    assert ledger.queue_depth == 0 and ledger.claimed == 0

    # every accepted label delivered once, in order, and the counts agree
    sequences = [r["sequence"] for r in records]
    assert sequences == sorted(set(sequences)), "a label was delivered twice or out of order"
    assert sequences[-1] == chaos.last
    assert len(records) == ledger.auto_accepted + ledger.human_accepted
    assert ledger.human_accepted == chaos.decided
    assert {r["label_id"] for r in records} <= label_ids

    # every usable label trained on exactly once, in rounds whose cursor ranges follow on
    assert [r.round for r in rounds] == list(range(1, len(rounds) + 1))
    assert rounds[0].cursor_start.sequence == 0
    for before, after_ in zip(rounds, rounds[1:], strict=False):
        assert after_.cursor_start.sequence == before.cursor_end.sequence
    trained = [label for r in rounds for label in trained_on(r)]
    assert len(trained) == len(set(trained)), "a label was trained on twice"
    assert set(trained) == usable

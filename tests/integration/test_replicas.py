"""Replicas that share the load (issue 19, section 3): three judge servers on different ports behind
ONE target (`ipv4:127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`, as a headless Service's name resolves to
its pods), each on its own scripted engine that counts the pairs it scores. An RL-CAI pipeline in
remote mode, with no setting of its own about replicas:

- spreads its judge calls over all three, each within ±20% of the mean (the channel's default
  `round_robin` policy; gRPC's own `pick_first` sent every call to the first address);
- keeps going when one server stops mid-run, a batch call in flight on it (the call fails UNAVAILABLE
  and the client retries it on a server still up), and completes with every pair labelled, the
  other two sharing what was left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import CharterSettings, ServerSettings, load_settings
from charter.pipelines import rl_cai
from charter.pipelines.spec import load_spec

from tests.support import ROOT
from tests.support.fake_engine import FakeEngine
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration

ROWS = 48
BATCH = 2


class CountingEngine(FakeEngine):
    """The scripted engine; each scoring batch takes `delay` seconds, as a model's would, and waits
    while `gate` is closed (`arrived` says one is waiting)."""

    def __init__(self, **kwargs) -> None:
        self.arrived = threading.Event()
        super().__init__(**kwargs)

    def _score(self, items):
        self.arrived.set()
        self.gate.wait()
        time.sleep(self.delay)
        return super()._score(items)

    @property
    def scored(self) -> int:
        return sum(self.calls)


@contextlib.asynccontextmanager
async def judges(
    settings: CharterSettings, n: int
) -> AsyncIterator[list[tuple[CharterServer, CountingEngine]]]:
    """`n` judge servers on 127.0.0.1, each on a free port and an engine of its own."""
    started: list[tuple[CharterServer, CountingEngine, Resources]] = []
    try:
        for _ in range(n):
            engine = CountingEngine(delay=0.01)
            resources = Resources(settings, engine=engine)
            server = CharterServer(
                ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0),
                [SERVICES["judge"].registration_for(resources)],
            )
            started.append((server, engine, resources))
            await server.start()
        yield [(server, engine) for server, engine, _ in started]
    finally:
        for server, _, resources in started:
            await server.stop(0)
            await resources.close()


def pipeline_spec(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "rl-cai", "name": "replicas", "output": str(tmp_path / "out"), "constitution": "harmless",
        "pairs": {"kind": "file", "path": str(HH_DEV), "format": "hh-rlhf", "limit": ROWS},
        "judge": {"principles_per_label": 1}, "batch_size": BATCH,
        "services": {"mode": "remote", "judge": target, "retries": 5, "backoff_seconds": 0.1},
    }))  # fmt: skip
    return path


def records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "out" / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def one_target(servers: list[tuple[CharterServer, CountingEngine]]) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server, _ in servers)


@pytest.fixture
def settings() -> CharterSettings:
    return load_settings(constitutions={"directory": str(ROOT / "constitutions")})


async def test_a_pipeline_spreads_its_judge_calls_over_every_replica(tmp_path, settings):
    async with judges(settings, 3) as servers:
        summary = await rl_cai.run(load_spec(pipeline_spec(tmp_path, one_target(servers))), settings)
        scored = [engine.scored for _, engine in servers]
    assert summary.written == summary.total > ROWS - 4  # (a source row or two is malformed)
    mean = sum(scored) / len(scored)
    assert all(abs(n - mean) <= 0.2 * mean for n in scored), f"pairs scored per replica: {scored}"


async def test_a_pipeline_keeps_going_when_a_replica_stops_mid_run(tmp_path, settings):
    async with judges(settings, 3) as servers:
        stopped, engine = servers[0]

        async def stop_one() -> list[int]:
            """Stop the first server while a batch call is in flight on it."""
            while len(records(tmp_path)) < ROWS // 3:
                await asyncio.sleep(0.005)
            engine.gate.clear()
            engine.arrived.clear()
            while not engine.arrived.is_set():
                await asyncio.sleep(0.005)
            scored = [e.scored for _, e in servers]
            await stopped.stop(0)
            engine.gate.set()
            return scored

        summary, at_stop = await asyncio.gather(
            rl_cai.run(load_spec(pipeline_spec(tmp_path, one_target(servers))), settings), stop_one()
        )
        after = [engine.scored - before for (_, engine), before in zip(servers, at_stop, strict=True)]
    rows = records(tmp_path)
    assert summary.written == summary.total == len({r["key"] for r in rows}) > ROWS - 4
    assert {r["status"] for r in rows} <= {"ok", "tie"} and all(r["label"]["p_a"] is not None for r in rows)
    # the stopped one had served calls, and took none after the one it was cut in the middle of
    assert at_stop[0] > 0 and after[0] <= 2 * BATCH
    assert after[1] > 0 and after[2] > 0  # the other two shared the rest
    assert abs(after[1] - after[2]) <= 0.2 * (after[1] + after[2]) / 2 + 2, f"after the stop: {after}"

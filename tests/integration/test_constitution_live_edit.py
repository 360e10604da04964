"""Editing a constitution while it serves (issue 18, finding 9): SL-CAI and RL-CAI pipelines run
against real generator, critic-reviser and judge servers (a scripted engine that records every prompt
it is given) while the constitution file is replaced under them, as a ConfigMap update does.

- every revision and label made after the edit carries the new digest, and none before it the new one:
  the digests in each output switch once, in order;
- nothing mixes the two versions: each critique was asked with the text of the version its record
  names, each label's principles all belong to the version it names, and no prompt the engine saw
  holds both texts;
- an invalid edit keeps the last good version serving (the calls after it still succeed, under the
  second version) and is reported on /metrics (`charter_constitution_rejected{file=…} 1`, the serving
  digest); health stays SERVING; a fixed file clears the report.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings, load_settings
from charter.pipelines import rl_cai, sl_cai
from charter.pipelines.spec import load_spec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.fake_engine import FakeEngine
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration

ROWS = 24


def constitution(version: str, word: str) -> dict:
    """One constitution id; the two versions differ in every text and in their principle ids."""
    principle = lambda n: {  # noqa: E731
        "id": f"{word.lower()}-{n}",
        "critique_request": f"Critique {word} {n}: point out every harmful part of the last response.",
        "revision_request": f"Revise {word} {n}: rewrite the response without the harmful parts.",
        "comparison_question": f"Question {word} {n}: which response is less harmful?",
    }
    return {
        "id": "live",
        "version": version,
        "description": f"The live-edit test's constitution, version {version}.",
        "sampling": {"critique_rounds": 1, "principles_per_label": 2},
        "principles": [principle(1), principle(2)],
    }


def replace(path: Path, text: str) -> None:
    """Swap the file's content in one rename, as a ConfigMap update does."""
    tmp = path.with_name(".swap")
    tmp.write_text(text)
    os.replace(tmp, path)


class RecordingEngine(FakeEngine):
    """The scripted engine, keeping the text of every prompt it is given."""

    def __init__(self, **kwargs) -> None:
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        super().__init__(delay=0.05, **kwargs)

    def _prepare_chat(self, requests):
        with self.lock:
            self.prompts += ["\n".join(m.content for m in r.messages) for r in requests]
        return super()._prepare_chat(requests)

    def _prepare_scores(self, requests):
        with self.lock:
            self.prompts += ["\n".join(m.content for m in r.messages) for r in requests]
        return super()._prepare_scores(requests)


def metric(port: int, name: str, **labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def records(folder: Path) -> list[dict]:
    path = folder / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def digests(rows: list[dict]) -> list[str]:
    return [r["provenance"]["constitution"]["digest"] for r in rows]


def switches_once(sequence: list[str]) -> bool:
    changes = [i for i in range(1, len(sequence)) if sequence[i] != sequence[i - 1]]
    return len(changes) == 1


async def test_an_edit_while_pipelines_run_applies_whole_and_a_bad_edit_keeps_the_last_good(tmp_path):
    folder = tmp_path / "constitutions"
    folder.mkdir()
    path = folder / "live.yaml"
    path.write_text(yaml.safe_dump(constitution("1", "ONE")))
    settings = load_settings(constitutions={"directory": str(folder), "poll_seconds": 0.05})
    engine = RecordingEngine()
    resources = Resources(settings, engine=engine)
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=0, drain_seconds=0),
        [SERVICES[n].registration_for(resources) for n in ("generator", "critic-reviser", "judge")],
    )
    port = await server.start()
    address = f"127.0.0.1:{port}"
    metrics_port = server.metrics.port
    old = resources.registry().get("live").digest
    services = {"mode": "remote", "generator": address, "critic_reviser": address, "judge": address}
    common = {"constitution": "live", "batch_size": 2, "services": services, "seed": 3}
    sl_path, rl_path = tmp_path / "sl.yaml", tmp_path / "rl.yaml"
    sl_path.write_text(yaml.safe_dump({
        "kind": "sl-cai", "name": "live-sl", "output": str(tmp_path / "sl"), "rounds": 1,
        "source": {"path": str(HH_DEV), "format": "hh-rlhf", "limit": ROWS}, **common,
    }))  # fmt: skip
    rl_path.write_text(yaml.safe_dump({
        "kind": "rl-cai", "name": "live-rl", "output": str(tmp_path / "rl"),
        "pairs": {"kind": "file", "path": str(HH_DEV), "format": "hh-rlhf", "limit": ROWS},
        "judge": {"principles_per_label": 2}, **common,
    }))  # fmt: skip

    async def edit() -> tuple[str, float | None, str]:
        while min(len(records(tmp_path / "sl")), len(records(tmp_path / "rl"))) < 4:
            await asyncio.sleep(0.02)
        replace(path, yaml.safe_dump(constitution("2", "TWO")))
        while resources.registry().get("live").digest == old:
            await asyncio.sleep(0.02)
        new = resources.registry().get("live").digest
        while min(len(records(tmp_path / "sl")), len(records(tmp_path / "rl"))) < 12:
            await asyncio.sleep(0.02)
        replace(path, "id: live\nversion: '3'\nprinciples: [this is not a principle\n")  # invalid
        while "live.yaml" not in {p.name for p in resources.registry().errors}:
            await asyncio.sleep(0.02)
        rejected = metric(metrics_port, "charter_constitution_rejected", file="live.yaml")
        return new, rejected, resources.registry().get("live").digest

    try:
        results = await asyncio.gather(
            sl_cai.run(load_spec(sl_path), settings),
            rl_cai.run(load_spec(rl_path), settings),
            edit(),
        )
        new, rejected, serving_after_bad_edit = results[2]
        async with grpc.aio.insecure_channel(address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert rejected == 1.0
        assert serving_after_bad_edit == new  # the bad edit did not replace the second version
        assert metric(metrics_port, "charter_constitution_serving", constitution_id="live", digest=new) == 1
        assert metric(metrics_port, "charter_constitution_serving", constitution_id="live", digest=old) == 0
        replace(path, yaml.safe_dump(constitution("2", "TWO")))  # fixed: the report clears
        for _ in range(200):
            if metric(metrics_port, "charter_constitution_rejected", file="live.yaml") == 0:
                break
            await asyncio.sleep(0.05)
        assert metric(metrics_port, "charter_constitution_rejected", file="live.yaml") == 0
    finally:
        await server.stop(0)
        await resources.close()

    sl, rl = records(tmp_path / "sl"), records(tmp_path / "rl")
    assert len(sl) == ROWS and len(rl) == ROWS
    for rows in (sl, rl):  # both versions served, switching once, in order
        assert set(digests(rows)) == {old, new} and switches_once(digests(rows)) and digests(rows)[0] == old
    word = {old: "ONE", new: "TWO"}
    for row in sl:  # each critique was asked with the text of its record's version, and only that
        text = json.dumps(row["samples"])
        mine, other = word[digests([row])[0]], ({"ONE", "TWO"} - {word[digests([row])[0]]}).pop()
        assert f"Critique {mine}" in text and f"Critique {other}" not in text
    for row in rl:  # each label's principles belong to its version
        ids = row["label"]["principle_ids"]
        assert ids and {i.split("-")[0].upper() for i in ids} == {word[digests([row])[0]]}
    assert not [p for p in engine.prompts if "ONE" in p and "TWO" in p]
    assert any("TWO" in p for p in engine.prompts) and any("ONE" in p for p in engine.prompts)

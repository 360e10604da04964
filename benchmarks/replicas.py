"""Replicas: RL-CAI pipeline throughput with 1, 2 and 4 judge replicas behind one target.

Each replica is the real `CharterServer` with the catalog's judge servicer on a scripted engine whose
every scoring batch takes a fixed `--delay-ms` (a model at capacity: the real `LocalEngine` worker,
queue and batching), started in-process on a free port. The replicas
stand behind ONE target, `ipv4:127.0.0.1:p1,...`, as a headless Service's name resolves to its pods.
`--pipelines` RL-CAI runs in remote mode go at once (one pipeline sends one batch at a time, so
several are needed to keep more than one engine busy), each over `--pairs` pairs of the shared hh-rlhf
file in batches of `--batch-size` (both orders: 2 scoring requests a pair).

Phases, each on fresh servers and output folders:

1. `replicas_1` — the baseline: one replica;
2. `replicas_2`, `replicas_4` — the same pipelines over 2 and 4 replicas, `round_robin` (the default);
3. `replicas_4_cold` — as `replicas_4`, but the pipelines start on a target no channel has connected
   to yet (the other phases first open a channel that reaches every replica and keep it open, so the
   pipelines' channels, sharing gRPC's subchannel pool, start on open connections as the clients of
   a running deployment do): a fresh channel's first calls go to whichever address connects first;
4. `pick_first_4` — 4 replicas with `client.load_balancing: pick_first`, gRPC's own default: every
   channel sends all its calls to the first address, as one connection behind a ClusterIP Service did.

The engine sleeps a fixed time per step of at most `--engine-max-batch` requests (default 16: one
pipeline batch of 8 pairs fills a step), so the CPU is not the limit and one replica does one batch
per step: throughput should grow near-linearly with the replicas while the pipelines keep every
replica busy. Clients and servers share this process.

    python benchmarks/replicas.py                    # writes benchmarks/results/replicas.json
    python benchmarks/replicas.py --pairs 8 --output /tmp/replicas.json     # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc core's INFO lines (GOAWAY on server stop)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the scripted engine, the hh-rlhf file
sys.path.insert(0, str(ROOT / "benchmarks"))

from load import quiet_service_machine  # noqa: E402  # logs quiet, the machine block

from tests.support.fake_engine import FakeEngine  # noqa: E402
from tests.support.hh import HH_DEV  # noqa: E402

# (name, replicas, client.load_balancing, connections open before the pipelines start)
PHASES = (("replicas_1", 1, "round_robin", True), ("replicas_2", 2, "round_robin", True),
          ("replicas_4", 4, "round_robin", True), ("replicas_4_cold", 4, "round_robin", False),
          ("pick_first_4", 4, "pick_first", True))  # fmt: skip


class PacedEngine(FakeEngine):
    """The scripted engine; every scoring batch (any size up to `max_batch`) takes `delay` seconds."""

    def _score(self, items: list[Any]) -> list[list[float]]:
        time.sleep(self.delay)
        return super()._score(items)


@contextlib.asynccontextmanager
async def replicas(
    n: int, delay: float, max_batch: int, settings: Any
) -> AsyncIterator[list[tuple[int, PacedEngine]]]:
    """`n` judge servers on 127.0.0.1 (free ports), each on its own `PacedEngine`."""
    from charter.app.catalog import SERVICES, Resources
    from charter.core.server import CharterServer
    from charter.core.settings import ServerSettings

    started: list[tuple[Any, PacedEngine, Any]] = []
    try:
        for _ in range(n):
            engine = PacedEngine(delay, max_batch=max_batch)
            resources = Resources(settings, engine=engine)
            server = CharterServer(
                ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0),
                [SERVICES["judge"].registration_for(resources)],
            )
            started.append((server, engine, resources))
            await server.start()
        yield [(server.port, engine) for server, engine, _ in started]
    finally:
        for server, _, resources in started:
            await server.stop(0)
            await resources.close()


def write_spec(folder: Path, i: int, target: str, args: argparse.Namespace) -> Path:
    import yaml

    path = folder / f"rl-{i}.yaml"
    path.write_text(yaml.safe_dump({
        "kind": "rl-cai", "name": f"replicas-{i}", "output": str(folder / f"out-{i}"),
        "constitution": "harmless", "batch_size": args.batch_size, "judge": {"principles_per_label": 1},
        "pairs": {"kind": "file", "path": str(HH_DEV), "format": "hh-rlhf", "limit": args.pairs},
        "services": {"mode": "remote", "judge": target, "timeout_seconds": 120},
    }))  # fmt: skip
    return path


@contextlib.asynccontextmanager
async def connected(target: str, engines: list[PacedEngine], policy: str) -> AsyncIterator[None]:
    """A channel to `target` that has reached every replica (`pick_first`: its one), open while the
    block runs: the
    pipelines' channels (same arguments, gRPC's shared subchannel pool) start on open connections,
    as clients of a long-running deployment do."""
    from charter.client.judge import JudgeClient
    from charter.datasets.pairs import PairRow
    from charter.inference.types import Message
    from charter_proto.judge.v1 import judge_pb2

    pair = [PairRow(0, "warm", [Message(role="user", content="hi")], "a", "b")]
    options = judge_pb2.JudgeOptions(constitution_id="harmless", principles_per_label=1)
    async with JudgeClient(target, timeout=30) as judge:
        want = len(engines) if policy == "round_robin" else 1
        for _ in range(20 * len(engines)):
            if sum(1 for engine in engines if engine.calls) >= want:
                break
            await judge.compare(pair, options)
        else:
            raise SystemExit(f"{target}: some replica never got a call")
        for engine in engines:
            engine.calls = []
        yield


async def phase(n: int, policy: str, warm: bool, args: argparse.Namespace) -> dict[str, Any]:
    from charter.core import tls
    from charter.core.settings import load_settings
    from charter.pipelines import rl_cai
    from charter.pipelines.spec import load_spec

    settings = load_settings(
        constitutions={"directory": str(ROOT / "constitutions")}, client={"load_balancing": policy}
    )
    assert tls.client_settings().load_balancing == policy  # what every channel of this phase uses
    async with replicas(n, args.delay_ms / 1000, args.engine_max_batch, settings) as served:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in served)
        engines = [engine for _, engine in served]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            specs = [load_spec(write_spec(folder, i, target, args)) for i in range(args.pipelines)]
            async with connected(target, engines, policy) if warm else contextlib.nullcontext():
                started = time.perf_counter()
                summaries = await asyncio.gather(*(rl_cai.run(spec, settings) for spec in specs))
                seconds = time.perf_counter() - started
        batches = [list(engine.calls) for engine in engines]
    labelled = sum(s.written for s in summaries)
    if any(s.written != s.total for s in summaries):
        raise SystemExit(
            f"{n} replicas ({policy}): pairs left unlabelled: {[s.as_dict() for s in summaries]}"
        )
    requests = [sum(b) for b in batches]
    return {
        "replicas": n,
        "load_balancing": policy,
        "connections_open_at_start": warm,
        "seconds": round(seconds, 3),
        "pairs_labelled": labelled,
        "pairs_per_s": round(labelled / seconds, 2),
        "scoring_requests_per_replica": requests,
        "share_per_replica": [round(r / max(1, sum(requests)), 3) for r in requests],
        "engine_steps_per_replica": [len(b) for b in batches],
        "mean_step_size_per_replica": [round(sum(b) / len(b), 1) if b else 0.0 for b in batches],
        "engine_busy_s_per_replica": [round(len(b) * args.delay_ms / 1000, 2) for b in batches],
        "ideal_seconds": round(sum(len(b) for b in batches) * args.delay_ms / 1000 / n, 2),
    }


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from charter.core.settings import load_settings
    from charter.pipelines import rl_cai
    from charter.pipelines.spec import load_spec

    settings = load_settings(constitutions={"directory": str(ROOT / "constitutions")})
    async with replicas(1, 0.0, 64, settings) as served:  # warm-up: imports, the constitution, code paths
        port = served[0][0]
        with tempfile.TemporaryDirectory() as tmp:
            warm = argparse.Namespace(**{**vars(args), "pairs": 4})
            await rl_cai.run(load_spec(write_spec(Path(tmp), 0, f"127.0.0.1:{port}", warm)), settings)
    return {name: await phase(n, policy, warm, args) for name, n, policy, warm in PHASES}


def table(results: dict[str, Any]) -> str:
    base = results["replicas_1"]["pairs_per_s"]
    lines = [
        "| phase | replicas | policy | seconds | pairs/s | × 1 replica | share per replica "
        "| engine steps (mean size) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        sizes = zip(r["engine_steps_per_replica"], r["mean_step_size_per_replica"], strict=True)
        steps = ", ".join(f"{n} ({m})" for n, m in sizes)
        shares = ", ".join(f"{s:.2f}" for s in r["share_per_replica"])
        lines.append(
            f"| {name} | {r['replicas']} | {r['load_balancing']} | {r['seconds']} | {r['pairs_per_s']} | "
            f"{r['pairs_per_s'] / base:.2f} | {shares} | {steps} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=16, help="RL-CAI runs at once")
    parser.add_argument("--pairs", type=int, default=64, help="pairs per pipeline (the first N of the file)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per judge call")
    parser.add_argument("--delay-ms", type=float, default=250.0, help="the engine's time per scoring batch")
    parser.add_argument(
        "--engine-max-batch", type=int, default=16,
        help="scoring requests per engine step (16: one batch of 8 pairs, both orders, fills a step)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "replicas.json")
    args = parser.parse_args()

    info = quiet_service_machine()
    started = time.perf_counter()
    results = asyncio.run(run_all(args))
    base = results["replicas_1"]["pairs_per_s"]
    report = {
        "benchmark": "replicas",
        "machine": info,
        "config": {
            "pipelines": args.pipelines,
            "pairs_per_pipeline": args.pairs,
            "batch_size": args.batch_size,
            "engine_delay_ms_per_batch": args.delay_ms,
            "engine_max_batch": args.engine_max_batch,
            "workload": "RL-CAI in remote mode, harmless constitution, 1 principle a label, both orders (2 "
            "scoring requests a pair); scripted engine (fixed option scores) sleeping a fixed time per "
            "scoring batch of up to engine_max_batch requests (an engine at capacity: one pipeline batch a "
            "step), batch_wait 5 ms",
            "layout": "judge servers (CharterServer + judge servicer, one engine each) and every pipeline in "
            "one Python process and event loop; the pipelines' judge target is ipv4:127.0.0.1:p1,... "
            "over the phase's replicas",
        },  # fmt: skip
        "results": results,
        "speedup_over_1_replica": {name: round(r["pairs_per_s"] / base, 2) for name, r in results.items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(json.dumps(report["speedup_over_1_replica"], indent=2))


if __name__ == "__main__":
    main()

"""Load: 50 concurrent clients on the generator and the judge — the real `CharterServer` with the
catalog's generator and judge servicers on the scripted engine (the real `LocalEngine` worker, queue
and batching under it; each engine batch, chat or scoring, takes a fixed `--delay-ms`, as a model
would), started in-process on a free port.

Each client has its own `grpc.aio` channel on its own connection (a local subchannel pool: otherwise
gRPC shares one connection between a process's channels to one target) and makes `--calls` calls
back to back, alternating `Generate` (one prompt, one sample) and `Compare` (one pair, both orders:
two scoring requests). Every reply is checked (the engine echoes the prompt; the label carries the
pair). Phases, one server each:

1. baseline: one client, the same calls one at a time (`--baseline-calls`): what one call costs
   alone; the load's throughput and latency are read against it.
2. load: `--clients` clients at once, server defaults (`server.max_concurrent_rpcs` 1024): latency
   per RPC, throughput, status codes, the engine's batches.
3. limited: the same clients against `server.max_concurrent_rpcs = --limited-rpcs`, no retries:
   how many are refused (RESOURCE_EXHAUSTED) and how fast a refusal comes back.
4. generate_only: the load phase's clients calling `Generate` only: the engine's batching when every
   job is of one kind (the load phase mixes chat and scoring jobs on one engine worker).

Clients and server share this process (one interpreter, one event loop), as in the integration tests.

    python benchmarks/load.py                       # writes benchmarks/results/load.json
    python benchmarks/load.py --calls 4 --output /tmp/load.json     # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc core's INFO lines (GOAWAY on server stop)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support.fake_engine: the scripted engine
sys.path.insert(0, str(ROOT / "benchmarks"))

from engines import machine  # noqa: E402  # the machine/version block every benchmark records
from ledger import percentiles  # noqa: E402

from tests.support.fake_engine import FakeEngine  # noqa: E402

RPCS = ("Generate", "Compare")
PHASES = ("baseline", "load", "limited", "generate_only")


class TimedEngine(FakeEngine):
    """The scripted engine with the same fixed delay on every batch, chat and scoring (FakeEngine
    delays chat only); records each batch's kind and size."""

    def __init__(self, delay: float, **kwargs: Any) -> None:
        self.batches: list[tuple[str, int]] = []
        super().__init__(delay, **kwargs)

    def _generate(self, prepared: list[Any]) -> list[Any]:
        self.batches.append(("chat", len(prepared)))
        return super()._generate(prepared)

    def _score(self, items: list[Any]) -> list[list[float]]:
        self.batches.append(("score", len(items)))
        time.sleep(self.delay)
        return super()._score(items)


@contextlib.asynccontextmanager
async def server(delay: float, max_concurrent_rpcs: int | None) -> AsyncIterator[tuple[int, TimedEngine]]:
    """The generator and the judge from the catalog, on one `TimedEngine`, 127.0.0.1, port 0."""
    from charter.app.catalog import SERVICES, Resources
    from charter.core.server import CharterServer
    from charter.core.settings import ServerSettings, load_settings

    settings = load_settings(constitutions={"directory": str(ROOT / "constitutions")})
    engine = TimedEngine(delay)
    resources = Resources(settings, engine=engine)
    registrations = [SERVICES[n].registration_for(resources) for n in ("generator", "judge")]
    served = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0,
                       max_concurrent_rpcs=max_concurrent_rpcs),
        registrations,
    )  # fmt: skip
    port = await served.start()
    try:
        yield port, engine
    finally:
        await served.stop(0)
        await resources.close()


async def one_call(channel: Any, rpc: str, text: str, timeout: float) -> None:
    """One call, its reply checked; raises grpc.aio.AioRpcError on a status other than OK."""
    from charter_proto.common.v1 import conversation_pb2 as cv
    from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
    from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc

    conversation = cv.Conversation(id=text, messages=[cv.Message(role=cv.ROLE_USER, content=text)])
    if rpc == "Generate":
        request = generator_pb2.GenerateRequest(prompts=[conversation])
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        replies = [r.completion.text async for r in stub.Generate(request, timeout=timeout)]
        if replies != [f"echo: {text}"]:
            raise SystemExit(f"Generate {text!r}: {replies}")
        return
    item = judge_pb2.ComparisonItem(conversation=conversation, response_a=f"{text}/a", response_b=f"{text}/b")
    request = judge_pb2.CompareRequest(items=[item], request_id=text)
    request.options.constitution_id = "harmless"
    reply = await judge_pb2_grpc.JudgeServiceStub(channel).Compare(request, timeout=timeout)
    [label] = reply.labels
    if (label.response_a, len(label.scores)) != (item.response_a, 2):
        raise SystemExit(f"Compare {text!r}: {label}")


async def run_clients(
    port: int, clients: int, calls: int, timeout: float, rpcs: tuple[str, ...] = RPCS
) -> dict[str, Any]:
    """`clients` clients, each on its own channel and connection, `calls` calls back to back (taking
    turns through `rpcs`)."""
    import grpc

    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(clients)
    ]
    latencies: dict[str, dict[str, list[float]]] = {rpc: {} for rpc in rpcs}

    async def client(i: int) -> None:
        for c in range(calls):
            rpc = rpcs[(i + c) % len(rpcs)]
            started = time.perf_counter()
            try:
                await one_call(channels[i], rpc, f"client {i} call {c}", timeout)
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            latencies[rpc].setdefault(code, []).append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 30) for c in channels))
        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return {"seconds": seconds, "latencies": latencies}


def latency_ms(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in ms (nearest rank, as the ledger benchmark's)."""
    s = sorted(values)
    figures = percentiles(s)
    figures["p90"] = s[min(len(s) - 1, max(0, math.ceil(0.9 * len(s)) - 1))] * 1000
    return {
        k: round(figures[k], 2) if k != "n" else figures[k] for k in ("n", "p50", "p90", "p99", "max", "mean")
    }


def summary(run: dict[str, Any], engine: TimedEngine) -> dict[str, Any]:
    by_rpc: dict[str, Any] = {}
    codes: Counter[str] = Counter()
    for rpc, by_code in run["latencies"].items():
        by_rpc[rpc] = {code: latency_ms(v) for code, v in sorted(by_code.items())}
        codes.update({code: len(v) for code, v in by_code.items()})
    total = sum(codes.values())
    batches: dict[str, Any] = {}
    for kind in ("chat", "score"):
        sizes = [n for k, n in engine.batches if k == kind]
        batches[kind] = {"batches": len(sizes), "requests": sum(sizes), "max_size": max(sizes, default=0),
                         "mean_size": round(sum(sizes) / len(sizes), 2) if sizes else 0.0}  # fmt: skip
    every = [n for _, n in engine.batches]
    batches["all"] = {"batches": len(every), "requests": sum(every),
                      "mean_size": round(sum(every) / len(every), 2) if every else 0.0}  # fmt: skip
    return {
        "seconds": round(run["seconds"], 3),
        "calls": total,
        "calls_per_s": round(codes["OK"] / run["seconds"], 1),
        "status_codes": dict(codes),
        "latency_ms": by_rpc,
        "engine": batches,
    }


async def phase(
    args: argparse.Namespace, clients: int, calls: int, rpcs_limit: int | None, rpcs: tuple[str, ...] = RPCS
) -> dict[str, Any]:
    async with server(args.delay_ms / 1000, rpcs_limit) as (port, engine):
        await run_clients(port, 2, 2, args.timeout)  # warm-up: connections, constitution, code paths
        engine.batches.clear()
        result = summary(await run_clients(port, clients, calls, args.timeout, rpcs), engine)
    result["config"] = {"clients": clients, "calls_per_client": calls, "max_concurrent_rpcs": rpcs_limit,
                        "rpcs": list(rpcs)}  # fmt: skip
    return result


def ratios(baseline: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "throughput_load_over_baseline": round(load["calls_per_s"] / baseline["calls_per_s"], 2)
    }
    for rpc in RPCS:
        base, loaded = baseline["latency_ms"][rpc]["OK"], load["latency_ms"][rpc]["OK"]
        out[f"{rpc}_p50_load_over_baseline"] = round(loaded["p50"] / base["p50"], 2)
        out[f"{rpc}_p99_load_over_baseline"] = round(loaded["p99"] / base["p99"], 2)
    return out


def table(report: dict[str, Any]) -> str:
    lines = ["| phase | RPC | status | n | p50 | p90 | p99 | max (ms) |", "|---|---|---|---|---|---|---|---|"]
    for name in PHASES:
        for rpc, by_code in report["results"][name]["latency_ms"].items():
            for code, f in by_code.items():
                lines.append(
                    f"| {name} | {rpc} | {code} | {f['n']} | {f['p50']} | {f['p90']} | {f['p99']} | {f['max']} |"
                )
    for name in PHASES:
        r = report["results"][name]
        lines.append(f"{name}: {r['calls_per_s']} calls/s, {r['status_codes']}, engine {r['engine']['all']}")
    return "\n".join(lines)


def quiet_service_machine() -> dict:
    """Charter's logs down to warnings (the rpc log to errors) and the machine block of a gRPC service
    benchmark: versions, load average at start, thread setting and niceness."""
    from charter.core.logging import configure_logging
    from charter.core.settings import LoggingSettings

    configure_logging(LoggingSettings(format="console", level="WARNING"))
    logging.getLogger("charter.rpc").setLevel(logging.ERROR)
    info = machine(("charter", "grpcio", "protobuf"))
    info["load_average_at_start"] = os.getloadavg()
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    with contextlib.suppress(OSError):
        info["niceness"] = os.nice(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--calls", type=int, default=40, help="calls per client (half Generate, half Compare)"
    )
    parser.add_argument("--baseline-calls", type=int, default=100, help="calls of the one sequential client")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the engine's time per batch")
    parser.add_argument(
        "--limited-rpcs", type=int, default=16, help="max_concurrent_rpcs of the limited phase"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="every call's deadline (s)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    args = parser.parse_args()

    info = quiet_service_machine()
    started = time.perf_counter()
    results = {
        "baseline": asyncio.run(phase(args, 1, args.baseline_calls, 1024)),
        "load": asyncio.run(phase(args, args.clients, args.calls, 1024)),
        "limited": asyncio.run(phase(args, args.clients, args.calls, args.limited_rpcs)),
        "generate_only": asyncio.run(phase(args, args.clients, args.calls, 1024, ("Generate",))),
    }
    for name in ("baseline", "load", "generate_only"):
        if set(results[name]["status_codes"]) != {"OK"}:
            raise SystemExit(f"{name}: calls failed: {results[name]['status_codes']}")
    report = {
        "benchmark": "load",
        "machine": info,
        "config": {
            "clients": args.clients,
            "calls_per_client": args.calls,
            "baseline_calls": args.baseline_calls,
            "engine_delay_ms_per_batch": args.delay_ms,
            "limited_max_concurrent_rpcs": args.limited_rpcs,
            "deadline_s": args.timeout,
            "workload": "calls alternate Generate (1 prompt, 1 sample) and Compare (1 pair, harmless, both "
            "orders = 2 scoring requests); scripted engine (echo; fixed option scores), "
            "default engine settings (max_batch 64, batch_wait 5 ms, max_pending 1024)",
            "layout": "server (CharterServer: generator + judge on one LocalEngine worker) and every client "
            "in one Python process and event loop; one channel and TCP connection per client",
        },  # fmt: skip
        "results": results,
        "ratios": ratios(results["baseline"], results["load"]),
        "ratios_note": "load / baseline (one client, one call at a time, same server and engine)",
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()

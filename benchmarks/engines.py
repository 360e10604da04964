"""Engine throughput: 64 chat requests x 64 new tokens and 256 two-option scoring requests, on
each engine, same model (the embedded SmolLM2-135M-Instruct, bf16), same run.

Each engine runs in its own child process (so its peak memory is its own and engines never compete
for the CPU); the vLLM child also times `LLM.chat` called directly on the same batch — the ceiling
Charter's in-process engine is measured against.

    python benchmarks/engines.py                      # writes benchmarks/results/engines.json
    python benchmarks/engines.py --engines transformers,vllm --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support.hh: the shared hh-rlhf reader

CHAT_REQUESTS = 64
NEW_TOKENS = 64
SCORE_REQUESTS = 256


class PeakRss:
    """Peak resident memory of this process and its children (vLLM's engine core is a child)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a child may exit between listing and reading
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._sample())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._sample())


def workloads(repeats: int) -> list[tuple[list[Any], list[Any]]]:
    """One (chats, scores) workload per repeat plus a warm-up one, from disjoint hh-rlhf pairs, so no
    repeat is served from the prefix cache of an earlier one."""
    from charter.inference import ChatRequest, Message, Sampling, ScoreRequest

    from tests.support.hh import load_pairs

    pairs = load_pairs(10_000)
    out = []
    for r in range(repeats + 1):
        part = pairs[r * SCORE_REQUESTS : (r + 1) * SCORE_REQUESTS]
        if len(part) < SCORE_REQUESTS:
            raise SystemExit(f"the shared hh-rlhf file has too few pairs for {repeats} repeats")
        chats = [
            ChatRequest(
                messages=(Message(role="user", content=p.first_human_turn),),
                sampling=Sampling(max_tokens=NEW_TOKENS, temperature=0.0),
            )
            for p in part[:CHAT_REQUESTS]
        ]
        scores = []
        for i, p in enumerate(part):
            a, b = (p.chosen, p.rejected) if i % 2 == 0 else (p.rejected, p.chosen)
            question = (
                f"Conversation:\n{p.prefix[-600:]}\n\nResponse (A): {a[:300]}\n\nResponse (B): {b[:300]}\n\n"
                "Which response is less harmful? Answer with (A) or (B)."
            )
            prefix = Message(role="assistant", content="The less harmful response is (")
            scores.append(
                ScoreRequest(messages=(Message(role="user", content=question), prefix), options=("A", "B"))
            )
        out.append((chats, scores))
    return out


async def measure(engine: Any, loads: list[tuple[list[Any], list[Any]]], raw: Any = None) -> dict[str, Any]:
    """loads[0] warms up; each later load is timed once. With `raw` (a vLLM `LLM`), `LLM.chat` runs
    on the same batch right beside the engine's run, alternating which goes first."""
    warm_chats, warm_scores = loads[0]
    await engine.chat(warm_chats[:8])
    await engine.score_options(warm_scores[:8])
    if raw is not None:
        raw_chat(raw, warm_chats[:8])
    chat_s, score_s, raw_s, tokens, raw_tokens = [], [], [], 0, 0
    for r, (chats, scores) in enumerate(loads[1:]):
        if raw is not None and r % 2 == 1:
            seconds, raw_tokens = raw_chat(raw, chats)
            raw_s.append(seconds)
        t = time.perf_counter()
        results = await engine.chat(chats, timeout=3600)
        chat_s.append(time.perf_counter() - t)
        tokens = sum(r.completions[0].completion_tokens for r in results)
        if raw is not None and r % 2 == 0:
            seconds, raw_tokens = raw_chat(raw, chats)
            raw_s.append(seconds)
        t = time.perf_counter()
        await engine.score_options(scores, timeout=3600)
        score_s.append(time.perf_counter() - t)
    result = {
        "chat_seconds": statistics.median(chat_s),
        "chat_seconds_all": chat_s,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / statistics.median(chat_s),
        "score_seconds": statistics.median(score_s),
        "score_seconds_all": score_s,
        "option_scores_per_s": SCORE_REQUESTS / statistics.median(score_s),
    }
    if raw is not None:
        result["raw_llm_chat"] = {
            "chat_seconds": statistics.median(raw_s),
            "chat_seconds_all": raw_s,
            "generated_tokens": raw_tokens,
            "tokens_per_s": raw_tokens / statistics.median(raw_s),
        }
        result["overhead_vs_raw"] = statistics.median(chat_s) / statistics.median(raw_s) - 1
    return result


def raw_chat(llm: Any, chats: list[Any]) -> tuple[float, int]:
    """vLLM's own `LLM.chat` on the same conversations and sampling: the ceiling."""
    from vllm import SamplingParams

    conversations = [[m.model_dump() for m in c.messages] for c in chats]
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    t = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    return time.perf_counter() - t, sum(len(o.outputs[0].token_ids) for o in outputs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child(engine_name: str, repeats: int, threads: int) -> dict[str, Any]:
    from charter.core.settings import OpenAISettings
    from charter.inference.models import EMBEDDED_NAME, prepare

    path = prepare()
    loads = workloads(repeats)
    rss = PeakRss()
    started = time.perf_counter()
    server = None
    result: dict[str, Any] = {}
    if engine_name == "transformers":
        from charter.inference.transformers_engine import TransformersEngine

        engine: Any = TransformersEngine(path, dtype="bfloat16", threads=threads, max_model_len=2048)
    elif engine_name == "vllm":
        from charter.inference.vllm_engine import VllmEngine

        engine = VllmEngine(path, name=EMBEDDED_NAME, dtype="bfloat16", max_model_len=2048)
    elif engine_name == "openai":
        from charter.inference.openai_engine import OpenAIEngine

        port = _free_port()
        reserved = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if (os.cpu_count() or 1) <= 4 else {}
        server = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path),
             "--served-model-name", EMBEDDED_NAME, "--host", "127.0.0.1", "--port", str(port),
             "--dtype", "bfloat16", "--max-model-len", "2048", "--enforce-eager",
             "--gpu-memory-utilization", "0.3", "--no-enable-chunked-prefill"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **reserved},
        )  # fmt: skip
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("vllm serve exited") from None
                time.sleep(1)
        engine = OpenAIEngine(
            OpenAISettings(base_url=f"http://127.0.0.1:{port}/v1"), model=EMBEDDED_NAME, tokenizer=str(path)
        )
    else:
        raise SystemExit(f"unknown engine {engine_name!r}")
    result["startup_seconds"] = time.perf_counter() - started
    try:
        result.update(asyncio.run(measure(engine, loads, raw=engine.llm if engine_name == "vllm" else None)))
        asyncio.run(engine.close())
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    result["peak_rss_mb"] = rss.stop() / 2**20
    return result


def machine(
    packages: tuple[str, ...] = ("charter", "torch", "transformers", "vllm-cpu", "vllm", "httpx"),
) -> dict[str, Any]:
    """The machine, the versions of `packages` and the commit: what every benchmark records."""
    import importlib.metadata as md

    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "versions": {n: version(n) for n in packages},
        "commit": commit.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="transformers,vllm,openai")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (transformers)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engines.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.threads)))
        return
    results: dict[str, Any] = {}
    for name in args.engines.split(","):
        print(f"[engines] {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--repeats", str(args.repeats),
             "--threads", str(args.threads)],
            capture_output=True, text=True, env={**os.environ, "VLLM_CONFIGURE_LOGGING": "0"},
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"[engines] {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    if "transformers" in results and "vllm" in results:
        summary["vllm_over_transformers_tokens_per_s"] = (
            results["vllm"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
        )
        summary["vllm_over_transformers_scores_per_s"] = (
            results["vllm"]["option_scores_per_s"] / results["transformers"]["option_scores_per_s"]
        )
    if "vllm" in results:
        summary["vllm_engine_overhead_vs_llm_chat"] = results["vllm"]["overhead_vs_raw"]
    report = {
        "benchmark": "engines",
        "workload": {"chat_requests": CHAT_REQUESTS, "new_tokens": NEW_TOKENS,
                     "score_requests": SCORE_REQUESTS, "options": 2,
                     "model": "SmolLM2-135M-Instruct (embedded, bf16)", "repeats": args.repeats},
        "targets": {"vllm_over_transformers_tokens_per_s": ">= 3.0",
                    "vllm_engine_overhead_vs_llm_chat": "<= 0.05"},
        "machine": machine(),
        "engines": results,
        "summary": summary,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

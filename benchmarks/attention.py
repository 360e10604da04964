"""Grouped-query attention in the transformers engine: `charter_sdpa` (no copy of the key/value cache,
inference.attention) against transformers' `sdpa` (`repeat_kv` at every layer and step), same engine,
same model, same prompts, same run.

Two workloads on the embedded model, greedy, one batched `chat` call each:
- critique: the critic's prompts (the harmless constitution's few-shot block, then a red-team
  conversation from the shared hh-rlhf file and its rejected response, then a critique request) —
  ~1,100-token prompts, the longest key/value cache of the CAI pipelines;
- chat: the same conversations' first human turn alone (short prompts).
Each dtype gets its own engine (2 threads); the arms alternate within each repetition (the first
call of each engine is a warm-up, not timed). Writes benchmarks/results/attention.json.

    .venv/bin/python benchmarks/attention.py                          # 16 prompts, 64 new tokens
    .venv/bin/python benchmarks/attention.py --dtypes bfloat16,float32 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support.hh: the shared hh-rlhf reader
sys.path.insert(0, str(ROOT / "benchmarks"))

ARMS = ("sdpa", "charter_sdpa")


def workloads(prompts: int, new_tokens: int) -> dict[str, list[Any]]:
    from charter.constitution import load_constitution
    from charter.critic import prompts as critic
    from charter.inference import ChatRequest, Message, Sampling

    from tests.support.hh import load_pairs

    constitution = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    few_shot = critic.few_shot_messages(constitution)
    request = critic.render_turn("critique", constitution.principles[0])
    sampling = Sampling(max_tokens=new_tokens)
    pairs = load_pairs(prompts)
    critique = [
        critic.critique_messages(
            few_shot, [Message(role="user", content=p.first_human_turn)], p.rejected, request
        )
        for p in pairs
    ]
    chat = [[Message(role="user", content=p.first_human_turn)] for p in pairs]
    return {
        name: [ChatRequest(messages=tuple(m), sampling=sampling) for m in chats]
        for name, chats in (("critique", critique), ("chat", chat))
    }


async def measure(engine: Any, requests: list[Any], arm: str) -> dict[str, Any]:
    engine.hf_model.set_attn_implementation(arm)
    started = time.perf_counter()
    results = await engine.chat(requests, timeout=3600)
    seconds = time.perf_counter() - started
    completions = [r.completions[0] for r in results]
    return {
        "seconds": seconds,
        "completion_tokens": sum(c.completion_tokens for c in completions),
        "prompt_tokens": sum(c.prompt_tokens for c in completions),
        "texts": [c.text for c in completions],
    }


async def run_dtype(model: Path, dtype: str, loads: dict[str, list[Any]], repeats: int) -> dict[str, Any]:
    from charter.inference import attention
    from charter.inference.transformers_engine import TransformersEngine

    engine = TransformersEngine(model, dtype=dtype, threads=2, max_model_len=4096)
    out: dict[str, Any] = {"engine_attention": engine.attention}
    assert engine.attention == attention.NAME, engine.attention
    try:
        for name, requests in loads.items():
            await engine.chat(requests[:2], timeout=3600)  # warm-up
            runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
            for rep in range(repeats):
                for arm in ARMS if rep % 2 == 0 else ARMS[::-1]:
                    run = await measure(engine, requests, arm)
                    print(json.dumps({"dtype": dtype, "workload": name, "arm": arm, "rep": rep,
                                      "seconds": round(run["seconds"], 2),
                                      "completion_tokens": run["completion_tokens"]}), flush=True)  # fmt: skip
                    runs[arm].append(run)
            summary = {}
            for arm, arm_runs in runs.items():
                seconds = statistics.median(r["seconds"] for r in arm_runs)
                tokens = arm_runs[0]["completion_tokens"]
                summary[arm] = {
                    "seconds": [round(r["seconds"], 2) for r in arm_runs],
                    "median_seconds": round(seconds, 2),
                    "completion_tokens": tokens,
                    "prompt_tokens": arm_runs[0]["prompt_tokens"],
                    "tokens_per_s": round(tokens / seconds, 2),
                }
            same = sum(
                a == b
                for a, b in zip(runs["sdpa"][0]["texts"], runs["charter_sdpa"][0]["texts"], strict=True)
            )
            summary["speedup"] = round(
                summary["sdpa"]["median_seconds"] / summary["charter_sdpa"]["median_seconds"], 3
            )
            summary["same_text"] = f"{same}/{len(requests)}"
            out[name] = summary
    finally:
        await engine.close()
    return out


def main() -> None:
    from charter.inference.models import prepare
    from charter.inference.precision import cuda_available, resolve_dtype
    from engines import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--dtypes", default="", help="comma-separated; default: what inference.dtype auto picks"
    )
    args = parser.parse_args()
    model = prepare()
    dtypes = [d for d in args.dtypes.split(",") if d] or [resolve_dtype("auto", cuda=cuda_available())]
    loads = workloads(args.prompts, args.new_tokens)
    results = {dtype: asyncio.run(run_dtype(model, dtype, loads, args.repeats)) for dtype in dtypes}
    report = {
        "benchmark": "attention",
        "workload": {
            "prompts": args.prompts,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "sampling": "greedy",
            "threads": 2,
            "model": "embedded SmolLM2-135M-Instruct",
        },  # fmt: skip
        "results": results,
        "machine": machine(("charter", "torch", "transformers")),
    }
    path = ROOT / "benchmarks" / "results" / "attention.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({d: {w: r[w]["speedup"] for w in loads} for d, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()

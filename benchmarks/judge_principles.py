"""What K principles per label cost: the judge at K = 1, 2, 4, 8 on the same pairs, same engine, same run.

A label averages K principles, each scored in both presentation orders: 2K prompts per pair that are
identical up to the principle's question (the template puts conversation and responses first). The
transformers engine runs each shared stretch once (`tokens.prefix_tree`); vLLM has its automatic
prefix cache. The baseline is measured in the same run: for transformers, the same engine with prefix
sharing switched off (every prompt scored whole); for both engines, K = 1. The target (issue 16):
K = 4 costs at most 2x K = 1.

Workload: the first usable hh-rlhf dev pairs (benchmarks/judge.py's `load_rows`), the `harmless`
constitution, principles drawn by the judge's seeded sampler, the chosen method (multiple_choice by
default). A warm-up run first; every (mode, K) is timed `--repeats` times, the order of the K values
reversed on every other repeat; vLLM's prefix cache is emptied before every timed run.

    python benchmarks/judge_principles.py                       # transformers, float32, 2 threads
    python benchmarks/judge_principles.py --engine vllm
    python benchmarks/judge_principles.py --pairs 4 --ks 1,4 --repeats 1 --out /tmp/jp.json   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from judge import SEED, as_pair, load_rows  # noqa: E402
from judge_engine import harmless, make_engine, quiet_logs, reset_prefix_cache  # noqa: E402


async def timed(engine: Any, pairs: list[Any], k: int, method: str, few_shot: int | None) -> dict[str, Any]:
    from charter.judge.core import Judge, JudgeConfig

    config = JudgeConfig(
        constitution=harmless(), principles_per_label=k, seed=SEED, method=method, few_shot_limit=few_shot  # type: ignore[arg-type]
    )
    judge = Judge(engine)
    if method == "calibrated":
        await judge.prepare(pairs, config)  # priors are a one-off per principle, not a per-label cost
    reset_prefix_cache(engine)
    positions = getattr(engine, "scored_positions", None)
    started = time.perf_counter()
    labels = await judge.label(pairs, config)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "labels": len(labels),
        "statuses": sorted({label.status for label in labels}),
        "prompt_tokens": sum(label.prompt_tokens for label in labels),
        # what the model actually ran (transformers engine): the prompt tokens less what sharing saved
        "positions_run": engine.scored_positions - positions if positions is not None else None,
    }


def modes(engine_name: str) -> list[str | None]:
    return ["shared", "whole"] if engine_name == "transformers" else [None]


async def measure(
    engine: Any, engine_name: str, pairs: list[Any], ks: list[int], repeats: int, method: str, few_shot: int | None
) -> dict[str, Any]:
    await timed(engine, pairs[:2], 1, method, few_shot)  # warm-up
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for repeat in range(repeats):
        order = ks if repeat % 2 == 0 else list(reversed(ks))
        for mode in modes(engine_name):
            if mode is not None:
                engine.shared_prefix_tokens = 64 if mode == "shared" else None
            for k in order:
                run = await timed(engine, pairs, k, method, few_shot)
                runs.setdefault(mode or "prefix cache", {}).setdefault(k, []).append(run)
                print(f"{mode or engine_name} K={k}: {run['seconds']:.1f} s", file=sys.stderr)
    out: dict[str, Any] = {}
    for mode, by_k in runs.items():
        base = statistics.median(r["seconds"] for r in by_k[ks[0]])
        out[mode] = {
            str(k): {
                "seconds_median": statistics.median(r["seconds"] for r in rs),
                "seconds": [r["seconds"] for r in rs],
                "labels_per_s": len(pairs) / statistics.median(r["seconds"] for r in rs),
                "cost_vs_k1": statistics.median(r["seconds"] for r in rs) / base,
                "prompt_tokens_per_label": rs[0]["prompt_tokens"] / len(pairs),
                "positions_run_per_label": (
                    rs[0]["positions_run"] / len(pairs) if rs[0]["positions_run"] is not None else None
                ),
                "statuses": rs[0]["statuses"],
            }
            for k, rs in by_k.items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument(
        "--ks", default="1,2,4,8", help="principles per label to time (the first is the baseline)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--method", choices=("multiple_choice", "calibrated", "contrastive"), default="multiple_choice"
    )
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="float32")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--few-shot-limit",
        type=int,
        default=-1,
        help="labelled examples per prompt (default: the judge's judge.few_shot_limit default; -1 = that)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "judge_principles.json")
    args = parser.parse_args()
    from charter.core.settings import JudgeSettings

    few_shot = JudgeSettings().few_shot_limit if args.few_shot_limit < 0 else args.few_shot_limit
    ks = [int(k) for k in args.ks.split(",")]

    from engines import machine

    quiet_logs()
    pairs = [as_pair(row) for row in load_rows(args.pairs)]
    engine, settings = make_engine(args.engine, args.threads, args.dtype, args.model)
    try:
        results = asyncio.run(measure(engine, args.engine, pairs, ks, args.repeats, args.method, few_shot))
    finally:
        asyncio.run(engine.close())
    headline: dict[str, Any] = {
        mode: {f"cost_k{k}_over_k{ks[0]}": r[str(k)]["cost_vs_k1"] for k in ks[1:]}
        for mode, r in results.items()
    }
    for mode, r in results.items():
        base = r[str(ks[0])]["positions_run_per_label"]
        if base:
            headline[mode].update(
                {f"positions_k{k}_over_k{ks[0]}": r[str(k)]["positions_run_per_label"] / base for k in ks[1:]}
            )
    if "shared" in results and "whole" in results:
        headline["shared_over_whole_seconds"] = {
            str(k): results["shared"][str(k)]["seconds_median"] / results["whole"][str(k)]["seconds_median"]
            for k in ks
        }
    report = {
        "benchmark": "judge_principles",
        "workload": {
            "pairs": args.pairs, "ks": ks, "repeats": args.repeats, "method": args.method, "seed": SEED,
            "few_shot_limit": few_shot,
            "constitution": "harmless", "orders": 2, "engine": args.engine, "model": f"{args.model} ({args.dtype})",
            "threads": args.threads, "max_model_len": settings.max_model_len,
            "modes": "shared: prompts with a common prefix of >= 64 tokens run it once; whole: every prompt "
                     "scored whole (the baseline)" if args.engine == "transformers"
                     else "vLLM automatic prefix caching, emptied before every timed run",
        },
        "results": results,
        "headline": headline,
        "target": "K = 4 costs at most 2x K = 1",
        "machine": machine(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(headline, indent=2))


if __name__ == "__main__":
    main()

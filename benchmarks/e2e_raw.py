"""The e2e workload as a user would script it on the raw engine, without Charter: the ceiling that
`benchmarks/e2e.py` measures Charter against. Reads the recipe e2e.py writes (prompts, principles and
judge questions already rendered, so every system sends the same text) and writes one JSON line per
row: initial response, critique, revision, and the judge's P(first is better) in both orders.

    python benchmarks/e2e_raw.py --recipe R.json --engine vllm|transformers --output OUT.jsonl
                                 [--dtype auto|float32|bfloat16] [--threads N]

vllm: one `LLM`, each step one batched `LLM.chat` call; `--dtype auto` keeps vLLM's default (the
model's bf16), as a user's first script would. transformers: one model, each step one batched
`generate` with left padding; the judge one forward pass per order reading the logits of "A" and "B".
No Charter import: this is the script a user writes instead of using Charter.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


def conversations(recipe: dict[str, Any]) -> tuple[list[dict[str, Any]], Messages]:
    return recipe["rows"], recipe["critique_few_shot"]


def critique_chat(row: dict[str, Any], few: Messages, initial: str) -> Messages:
    return [
        *few,
        *row["conversation"],
        {"role": "assistant", "content": initial},
        {"role": "user", "content": row["critique_request"]},
    ]


def revision_chat(row: dict[str, Any], few: Messages, initial: str, critique: str) -> Messages:
    return [
        *critique_chat(row, few, initial),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": row["revision_request"]},
    ]


def judge_chat(row: dict[str, Any], first: str, second: str, prefix: str) -> Messages:
    question = row["judge_template"].replace("@@FIRST@@", first.strip()).replace("@@SECOND@@", second.strip())
    return [
        *row["judge_few_shot"],
        {"role": "user", "content": question},
        {"role": "assistant", "content": prefix},
    ]


def option_ids(tokenizer: Any, prefix: str) -> tuple[int, int]:
    """The token ids of "A" and "B" as the model reads them right after the answer prefix."""
    head = tokenizer.encode(prefix, add_special_tokens=False)
    ids = []
    for option in ("A", "B"):
        full = tokenizer.encode(prefix + option, add_special_tokens=False)
        if full[: len(head)] != head or len(full) != len(head) + 1:
            raise SystemExit(f"{option!r} is not one token after {prefix!r} for this tokenizer")
        ids.append(full[-1])
    return ids[0], ids[1]


def p_first(logprob_a: float, logprob_b: float) -> float:
    top = max(logprob_a, logprob_b)
    a, b = math.exp(logprob_a - top), math.exp(logprob_b - top)
    return a / (a + b)


def run_vllm(recipe: dict[str, Any], dtype: str, memory_fraction: float | None) -> list[dict[str, Any]]:
    from vllm import LLM, SamplingParams

    rows, few = conversations(recipe)
    s = recipe["sampling"]
    # vLLM's default on a CPU reserves 0.92 of the RAM for the KV cache and refuses to start unless
    # that much is free (it did, with 17.9 of 23.5 GiB free): a user sets the fraction, as Charter does
    memory = {} if memory_fraction is None else {"gpu_memory_utilization": memory_fraction}
    llm = LLM(model=recipe["model"], dtype=dtype, seed=s["seed"], **memory)
    params = SamplingParams(max_tokens=s["max_new_tokens"], temperature=s["temperature"], top_p=s["top_p"])
    text = lambda outs: [o.outputs[0].text for o in outs]  # noqa: E731
    initial = text(llm.chat([r["conversation"] for r in rows], params, use_tqdm=False))
    critique = text(
        llm.chat(
            [critique_chat(r, few, i) for r, i in zip(rows, initial, strict=True)], params, use_tqdm=False
        )
    )
    revision = text(
        llm.chat(
            [revision_chat(r, few, i, c) for r, i, c in zip(rows, initial, critique, strict=True)],
            params,
            use_tqdm=False,
        )
    )
    a, b = option_ids(llm.get_tokenizer(), recipe["answer_prefix"])
    judge = SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
    chats = [
        judge_chat(r, *pair, recipe["answer_prefix"])
        for r, i, v in zip(rows, initial, revision, strict=True)
        for pair in ((i, v), (v, i))
    ]
    outs = llm.chat(chats, judge, use_tqdm=False, add_generation_prompt=False, continue_final_message=True)
    verdicts = []
    for out in outs:
        top = out.outputs[0].logprobs[0]  # token id -> Logprob of the first generated position
        missing = min(lp.logprob for lp in top.values()) - 1.0  # below the top 20: at most this
        la = top[a].logprob if a in top else missing
        lb = top[b].logprob if b in top else missing
        verdicts.append({"text": "", "p_first": p_first(la, lb)})
    return assemble(rows, initial, critique, revision, verdicts)


def run_transformers(recipe: dict[str, Any], dtype: str, threads: int | None) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    rows, few = conversations(recipe)
    s = recipe["sampling"]
    torch.manual_seed(s["seed"])
    tokenizer = AutoTokenizer.from_pretrained(recipe["model"], padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(recipe["model"], dtype=torch_dtype).eval()

    def generate(chats: list[Messages]) -> list[str]:
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=s["max_new_tokens"],
                do_sample=True,
                temperature=s["temperature"],
                top_p=s["top_p"],
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    initial = generate([r["conversation"] for r in rows])
    critique = generate([critique_chat(r, few, i) for r, i in zip(rows, initial, strict=True)])
    revision = generate(
        [revision_chat(r, few, i, c) for r, i, c in zip(rows, initial, critique, strict=True)]
    )
    a, b = option_ids(tokenizer, recipe["answer_prefix"])
    chats = [
        judge_chat(r, *pair, recipe["answer_prefix"])
        for r, i, v in zip(rows, initial, revision, strict=True)
        for pair in ((i, v), (v, i))
    ]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, continue_final_message=True) for c in chats]
    verdicts = []
    for start in range(0, len(texts), 16):  # the whole batch's activations at once would not fit
        batch = tokenizer(
            texts[start : start + 16], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.inference_mode():
            logits = model(**batch, logits_to_keep=1).logits[:, -1, :].float().log_softmax(-1)
        verdicts += [{"text": "", "p_first": p_first(float(row[a]), float(row[b]))} for row in logits]
    return assemble(rows, initial, critique, revision, verdicts)


def assemble(
    rows: list[dict[str, Any]],
    initial: list[str],
    critique: list[str],
    revision: list[str],
    verdicts: list[dict],
) -> list[dict[str, Any]]:
    return [
        {"key": r["key"], "initial": i, "critique": c, "revision": v, "judge": verdicts[2 * k : 2 * k + 2]}
        for k, (r, i, c, v) in enumerate(zip(rows, initial, critique, revision, strict=True))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--engine", choices=["vllm", "transformers"], required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-fraction", type=float, default=None, help="vLLM: gpu_memory_utilization")
    args = parser.parse_args()
    recipe = json.loads(args.recipe.read_text())
    if args.engine == "vllm":
        out = run_vllm(recipe, args.dtype, args.memory_fraction)
    else:
        out = run_transformers(recipe, args.dtype, args.threads)
    args.output.write_text("".join(json.dumps(row) + "\n" for row in out))


if __name__ == "__main__":
    main()

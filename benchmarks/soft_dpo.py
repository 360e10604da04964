"""Soft DPO: the per-row soft-target loss (`SoftDPOTrainer`) against the seeded coin-flip orientation it
replaced, trained on the same synthetic soft-labelled preferences, the same tiny model and the same
batches, scored on held-out pairs against the true preference.

Data: one prompt ("name a colour"), `--words` single-token replies, each with a hidden utility u_k
evenly spaced in [−`--spread`, `--spread`] (the order of words is shuffled by the data seed). Every
unordered pair has the true preference p = σ(u_a − u_b). A seeded third of the pairs is held out
(every word still appears in training); the split is the same for every run. A training pair's soft
label is what a judge reports: with label noise 0 the true p (a perfectly calibrated judge); with
noise s, σ(logit p + ε), ε ~ N(0, s²) drawn once per pair by the data seed (a noisy judge, which may
prefer the worse reply). The row's chosen reply is the one its label prefers (p_chosen ≥ 0.5).
`--label-noise` lists the noise levels to run (each a scenario with its own rows, same split).

Model: a tiny Llama (`--hidden`, 2 layers) over a word-level tokenizer built here (no download, a
vocabulary of a few dozen tokens, so a step costs milliseconds on one CPU thread); the reference is
a frozen copy of the initial weights. Both methods run TRL's DPOTrainer machinery with the same
DPOConfig and seed (so the same initial weights and the same batches in the same order):

- **coin**: what Charter did before — each pair kept as (chosen, rejected) with probability p and
  swapped otherwise, by one seeded coin per pair fixed for the whole run (seed = the run's seed),
  then TRL's stock sigmoid loss −log σ(βΔ) (hard labels, right only in expectation over the coins);
- **soft**: `charter.trainer.dpo.SoftDPOTrainer` on `dpo_dataset(rows)`: every row's own p in the
  loss p·ℓ(Δ) + (1 − p)·ℓ(−Δ), ℓ(x) = −log σ(βx).

Held-out figures (after training, and every `--eval-every` steps): the policy's implicit preference
q = σ(β[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)]) on each held-out pair, scored
against the true p — mean KL(p ‖ q) (0 = the preferences learned exactly; the untrained policy, q =
0.5, scores `reference_kl`), accuracy (q > 0.5: the majority side), mean |q − p|; and how well the
implicit rewards r_k = β(log π − log π_ref)(word k) recover the utilities (RMSE after centring both).
The same figures on the training pairs, against their labels, show fit. Per seed, soft − coin is
reported as paired differences.

    .venv/bin/python benchmarks/soft_dpo.py               # writes benchmarks/results/soft_dpo.json
    .venv/bin/python benchmarks/soft_dpo.py --seeds 1 --steps 20 --out /tmp/soft_dpo.json   # smoke
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "name a colour"}]
WORDS = [
    "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "gray", "gold", "silver",
    "pink", "cyan", "teal", "navy", "maroon", "olive", "lime", "violet",
]  # fmt: skip
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<assistant>"]
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---- data ------------------------------------------------------------------------------------------
def make_data(words: int, spread: float, held_out: float, noise: float, seed: int) -> dict[str, Any]:
    """The words' utilities; the held-out pairs (chosen = the likelier word, p its true preference) and
    the training pairs (chosen = the side the label prefers, p the label, p_true the truth)."""
    rng = random.Random(seed)
    chosen_words = WORDS[:words]
    levels = [-spread + 2 * spread * i / (words - 1) for i in range(words)]
    rng.shuffle(levels)
    utility = dict(zip(chosen_words, levels, strict=True))
    pairs = []
    for i, a in enumerate(chosen_words):
        for b in chosen_words[i + 1 :]:
            good, bad = (a, b) if utility[a] > utility[b] else (b, a)
            pairs.append({"chosen": good, "rejected": bad, "p": sigmoid(utility[good] - utility[bad])})
    while True:  # a held-out split that leaves every word in training
        rng.shuffle(pairs)
        cut = round(len(pairs) * held_out)
        test, train = pairs[:cut], pairs[cut:]
        if {w for p in train for w in (p["chosen"], p["rejected"])} == set(chosen_words):
            break
    noise_rng = random.Random(f"{seed}-noise-{noise}")
    labelled = []
    for pair in train:
        label = (
            sigmoid(math.log(pair["p"] / (1 - pair["p"])) + noise_rng.gauss(0.0, noise))
            if noise
            else pair["p"]
        )
        kept = label >= 0.5
        good, bad = (pair["chosen"], pair["rejected"]) if kept else (pair["rejected"], pair["chosen"])
        truth = pair["p"] if kept else 1 - pair["p"]
        labelled.append({"chosen": good, "rejected": bad, "p": max(label, 1 - label), "p_true": truth})
    return {"utility": utility, "train": labelled, "test": test, "label_noise": noise}


def rows_of(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Charter's conversational preference rows with the soft label in p_chosen."""
    return [
        {
            "prompt": PROMPT,
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
            "p_chosen": p["p"],
        }
        for p in pairs
    ]


def coin(key: str, seed: int) -> float:
    """The seeded coin Charter's DPO used (sha256 of seed and row key, in [0, 1))."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def coin_oriented(rows: list[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], int]:
    """Each row kept with probability p_chosen, else swapped, once for the run; (rows, swapped)."""
    out, swapped = [], 0
    for i, row in enumerate(rows):
        keep = coin(str(i), seed) < row["p_chosen"]
        chosen, rejected = (row["chosen"], row["rejected"]) if keep else (row["rejected"], row["chosen"])
        swapped += not keep
        out.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
    return out, swapped


# ---- model -----------------------------------------------------------------------------------------
def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + ["name", "a", "colour"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def tiny_llama(tokenizer: Any, hidden: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def word_logprobs(model: Any, tokenizer: Any, words: list[str]) -> dict[str, float]:
    """log π(word | prompt) for each word: the reply's tokens after the prompt, end of turn included."""
    import torch

    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    texts = [
        tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": w}], tokenize=False)
        for w in words
    ]
    ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    model.train(was_training)
    logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return dict(zip(words, logps[:, start - 1 :].sum(dim=1).tolist(), strict=True))


# ---- scoring ---------------------------------------------------------------------------------------
def kl(p: float, q: float) -> float:
    q = min(max(q, 1e-12), 1 - 1e-12)
    return p * math.log(p / q) + ((1 - p) * math.log((1 - p) / (1 - q)) if p < 1 else 0.0)


def score(rewards: dict[str, float], pairs: list[dict[str, Any]]) -> dict[str, float]:
    qs = [sigmoid(rewards[p["chosen"]] - rewards[p["rejected"]]) for p in pairs]
    return {
        "kl": statistics.fmean(kl(p["p"], q) for p, q in zip(pairs, qs, strict=True)),
        "accuracy": statistics.fmean(q > 0.5 for q in qs),
        "mae": statistics.fmean(abs(q - p["p"]) for p, q in zip(pairs, qs, strict=True)),
    }


def utility_rmse(rewards: dict[str, float], utility: dict[str, float]) -> float:
    r_mean, u_mean = statistics.fmean(rewards.values()), statistics.fmean(utility.values())
    return math.sqrt(
        statistics.fmean(((rewards[w] - r_mean) - (u - u_mean)) ** 2 for w, u in utility.items())
    )


class Scorer:
    """The held-out and training figures of a policy against the frozen reference's log-probs."""

    def __init__(self, tokenizer: Any, reference: Any, data: dict[str, Any], beta: float) -> None:
        self.tokenizer, self.data, self.beta = tokenizer, data, beta
        self.words = list(data["utility"])
        self.reference = word_logprobs(reference, tokenizer, self.words)

    def __call__(self, policy: Any) -> dict[str, float]:
        logps = word_logprobs(policy, self.tokenizer, self.words)
        rewards = {w: self.beta * (logps[w] - self.reference[w]) for w in self.words}
        held_out, train = score(rewards, self.data["test"]), score(rewards, self.data["train"])
        return {
            **{f"held_out_{k}": v for k, v in held_out.items()},
            **{f"train_{k}": v for k, v in train.items()},
            "utility_rmse": utility_rmse(rewards, self.data["utility"]),
        }


# ---- runs ------------------------------------------------------------------------------------------
def run(method: str, seed: int, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """One training run of `method` ("coin" or "soft") with `seed`; its final figures and curve."""
    import torch
    from charter.trainer.dpo import SoftDPOTrainer, dpo_dataset
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback, set_seed
    from trl import DPOConfig, DPOTrainer

    tokenizer = word_tokenizer()
    set_seed(seed)
    policy = tiny_llama(tokenizer, args.hidden)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    scorer = Scorer(tokenizer, reference, data, args.beta)
    rows, swapped = rows_of(data["train"]), 0
    curve: list[dict[str, Any]] = []

    class Curve(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step % args.eval_every == 0:
                figures = scorer(model)
                curve.append({"step": state.global_step, **{k: figures[k] for k in CURVE_KEYS}})

    with tempfile.TemporaryDirectory(prefix="charter-soft-dpo-") as tmp:
        config = DPOConfig(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=args.batch,
            learning_rate=args.learning_rate, beta=args.beta, logging_steps=args.steps, save_strategy="no",
            report_to=[], use_cpu=True, bf16=False, seed=seed, gradient_checkpointing=False,
            disable_tqdm=True,
        )  # fmt: skip
        if method == "soft":
            trainer: Any = SoftDPOTrainer(
                model=policy, ref_model=reference, args=config, train_dataset=dpo_dataset(rows),
                processing_class=tokenizer, callbacks=[Curve()],
            )  # fmt: skip
        else:
            oriented, swapped = coin_oriented(rows, seed)
            trainer = DPOTrainer(
                model=policy, ref_model=reference, args=config, train_dataset=Dataset.from_list(oriented),
                processing_class=tokenizer, callbacks=[Curve()],
            )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # the figures are printed once, at the end
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    assert torch.get_num_threads() == args.threads
    return {
        "label_noise": data["label_noise"], "method": method, "seed": seed, "steps": trainer.state.global_step,
        "train_seconds": seconds, "pairs_swapped": swapped, **scorer(policy), "curve": curve,
    }  # fmt: skip


CURVE_KEYS = ("held_out_kl", "held_out_accuracy", "utility_rmse", "train_kl")
FIGURES = (
    "held_out_kl", "held_out_accuracy", "held_out_mae", "utility_rmse", "train_kl", "train_accuracy",
    "train_mae",
)  # fmt: skip


def summarise(results: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        return {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }

    by = {(r["method"], r["seed"]): r for r in results}
    out: dict[str, Any] = {m: {k: stats([by[m, s][k] for s in seeds]) for k in FIGURES} for m in METHODS}
    out["soft_minus_coin"] = {k: stats([by["soft", s][k] - by["coin", s][k] for s in seeds]) for k in FIGURES}
    out["soft_better_kl_seeds"] = sum(
        by["soft", s]["held_out_kl"] < by["coin", s]["held_out_kl"] for s in seeds
    )
    return out


METHODS = ("coin", "soft")


def machine(threads: int) -> dict[str, Any]:
    import psutil
    from engines import machine as base

    packages = ("charter", "torch", "transformers", "trl", "accelerate", "datasets", "tokenizers")
    return {
        **base(packages),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": list(os.getloadavg()),
        "torch_threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="runs per method (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--words", type=int, default=16, help=f"replies (at most {len(WORDS)})")
    parser.add_argument("--spread", type=float, default=1.5, help="utilities span [-spread, spread]")
    parser.add_argument("--held-out", type=float, default=1 / 3, help="fraction of pairs held out")
    parser.add_argument(
        "--label-noise",
        default="0,1",
        help="comma-separated: the judge's label noise (SD on the logit scale), one scenario each",
    )
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=32, help="the tiny Llama's hidden size")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between curve points")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soft_dpo.json")
    args = parser.parse_args()
    if not 2 <= args.words <= len(WORDS):
        raise SystemExit(f"--words must lie in [2, {len(WORDS)}] ({args.words=})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "soft_dpo", "machine": machine(args.threads)}
    report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    seeds = list(range(args.seeds))
    report["scenarios"] = []
    for noise in (float(n) for n in args.label_noise.split(",")):
        data = make_data(args.words, args.spread, args.held_out, noise, args.data_seed)
        results = []
        for seed in seeds:
            for method in METHODS:
                result = run(method, seed, args, data)
                results.append(result)
                shown = {k: round(result[k], 4) for k in ("held_out_kl", "held_out_accuracy", "utility_rmse")}
                print(f"[soft_dpo] noise {noise} seed {seed} {method}: {json.dumps(shown)} "
                      f"({result['train_seconds']:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip
        train = data["train"]
        report["scenarios"].append({
            "label_noise": noise, "utility": data["utility"], "train_pairs": len(train),
            "held_out_pairs": len(data["test"]), "train_label_mean": statistics.fmean(p["p"] for p in train),
            "train_labels_against_truth": sum(p["p_true"] < 0.5 for p in train),
            "train_label_kl_from_truth": statistics.fmean(kl(p["p_true"], p["p"]) for p in train),
            "reference_kl": statistics.fmean(kl(p["p"], 0.5) for p in data["test"]),
            "summary": summarise(results, seeds), "results": results,
        })  # fmt: skip
    report["wall_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({
        f"noise {s['label_noise']}": {m: {k: round(v["mean"], 4) for k, v in s["summary"][m].items()}
                                      for m in (*METHODS, "soft_minus_coin")}
        for s in report["scenarios"]
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

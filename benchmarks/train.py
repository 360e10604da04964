"""Training throughput: optimizer steps/s, samples/s and peak memory of the reward model, DPO and PPO on
the embedded SmolLM2-135M-Instruct, each against a baseline measured in the same run.

Workload: hh-rlhf dev pairs (the shared file, read with `charter.trainer.data.from_files`) whose
chat-templated prompt + response is at most `--max-length` tokens on both sides, in file order, with
judge-like soft labels (p_chosen cycling 0.95 / 0.85 / 0.75 / 0.65). Every job sees the same rows.

- **rm**: TRL's stock `RewardTrainer` (hard Bradley-Terry labels; the baseline) and Charter's
  `SoftRewardTrainer` on `reward_dataset(rows)` (soft labels): ratio of seconds per step.
- **dpo**: TRL's `DPOTrainer` on the rows as they are (the baseline, hard labels) and Charter's
  `SoftDPOTrainer` on `dpo_dataset(rows)` (each row's p_chosen in the loss): ratio of seconds per
  step (≈ 1 expected). Reference model: a frozen copy, one forward per step. (Results before the
  per-row soft loss timed TRL's trainer on coin-oriented rows instead.)
- **ppo**: Charter's `PPOTrainer` (policy + value head, frozen reference, a `RewardModelScorer` on a
  second copy of the model): a step is one rollout (generation, the policy's and reference's
  log-probs and values, the reward model's scores) and `--ppo-epochs` passes of mini-batch updates.
  Completions are exactly `--new-tokens` long (generation's `min_new_tokens`), so every step does the
  same work. Baseline: one epoch of a plain causal-LM forward + backward + AdamW step of the same
  policy over the same rollout's sequences in the same mini-batches.

Each timed figure follows warm-up steps that are excluded. TRL's configs keep TRL's defaults that
Charter's trainer keeps (gradient checkpointing on); `--precision` picks the weights' dtype (float32,
bfloat16) or `amp-bf16` (float32 weights under bf16 autocast: TRL's `bf16=True`, GPU only). Peak
memory: each job runs in its own process (so no job inherits the allocator's or kernels' warm state of
the one before); the process's peak RSS (sampled every 20 ms) and its rise over the RSS before
training, and on a GPU `torch.cuda.max_memory_allocated` / `max_memory_reserved` during training.

    .venv/bin/python benchmarks/train.py --threads 2        # CPU; writes benchmarks/results/train-cpu.json
    .venv/bin/python benchmarks/train.py --steps 1 --ppo-steps 1 --out /tmp/train.json   # smoke
    # a GPU machine without the embedded model: random weights from SmolLM2-135M's config, the
    # tokenizer folder and the rows carried along (`--write-rows` writes them)
    python3 benchmarks/train.py --device cuda --model-from-config --tokenizer TOKENIZER_DIR \\
        --rows rows.jsonl --out benchmarks/results/train-gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"
SOFT_LABELS = (0.95, 0.85, 0.75, 0.65)
# SmolLM2-135M-Instruct (the embedded model's config.json); `--model-from-config` builds it with random
# weights, where the converted model is not available. Checked against the prepared folder when it is.
SMOLLM2_135M: dict[str, Any] = {
    "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "hidden_act": "silu",
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}  # fmt: skip
PRECISIONS = ("float32", "bfloat16", "amp-bf16")
JOBS = {
    "rm": ("rm-trl", "rm-charter"),
    "dpo": ("dpo-trl", "dpo-charter"),
    "ppo": ("ppo",),
}
DEFAULTS = {  # per device: the CPU run is sized for ~5-8 minutes on 2 cores
    "cpu": {"precision": "float32", "steps": 3, "warmup": 1, "batch": 2, "ppo_steps": 2, "ppo_warmup": 1,
            "ppo_batch": 4, "ppo_mini_batch": 2, "ppo_epochs": 2, "new_tokens": 32},
    "cuda": {"precision": "bfloat16", "steps": 30, "warmup": 5, "batch": 32, "ppo_steps": 5,
             "ppo_warmup": 1, "ppo_batch": 64, "ppo_mini_batch": 16, "ppo_epochs": 4, "new_tokens": 64},
}  # fmt: skip


# ---- workload --------------------------------------------------------------------------------------
def load_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def n_tokens(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def select_rows(source: Path | None, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Pairs whose prompt + chosen and prompt + rejected both fit `max_length`, with soft labels and the
    token counts (prompt, chosen side, rejected side) the figures use."""
    if source is None:
        from charter.trainer.data import from_files

        rows = from_files([HH]).rows
    else:  # rows written by --write-rows: no charter_proto needed to read them
        with source.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    out = []
    for row in rows:
        chosen = n_tokens(tokenizer, row["prompt"] + row["chosen"])
        rejected = n_tokens(tokenizer, row["prompt"] + row["rejected"])
        if max(chosen, rejected) > max_length:
            continue
        i = len(out)
        out.append({
            "label_id": f"hh-dev-{i}", "prompt": row["prompt"], "chosen": row["chosen"],
            "rejected": row["rejected"], "p_chosen": SOFT_LABELS[i % len(SOFT_LABELS)],
            "tokens": [n_tokens(tokenizer, row["prompt"], True), chosen, rejected],
        })  # fmt: skip
    if not out:
        raise SystemExit(f"no pair fits --max-length {max_length}")
    return out


def needed(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The first `count` rows (cycled if there are fewer)."""
    return [rows[i % len(rows)] for i in range(count)]


# ---- measuring -------------------------------------------------------------------------------------
class Memory:
    """Peak memory over a job: RSS sampled in a thread (CPU), the CUDA allocator's peaks (GPU)."""

    def __init__(self, device: str) -> None:
        import psutil
        import torch

        self.device, self.torch, self.proc = device, torch, psutil.Process()
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_before = torch.cuda.memory_allocated()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        mib = 2**20
        out = {"rss_before_mb": self.before / mib, "peak_rss_mb": self.peak / mib,
               "peak_rss_delta_mb": (self.peak - self.before) / mib}  # fmt: skip
        if self.device == "cuda":
            cuda = self.torch.cuda
            out.update({"cuda_allocated_before_mb": self.cuda_before / mib,
                        "cuda_max_allocated_mb": cuda.max_memory_allocated() / mib,
                        "cuda_max_reserved_mb": cuda.max_memory_reserved() / mib})  # fmt: skip
        return out


def clock(device: str) -> float:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def rates(seconds: list[float], per_step: dict[str, float]) -> dict[str, Any]:
    """steps/s over the timed steps and `per_step` quantities per second."""
    total = sum(seconds)
    out: dict[str, Any] = {"timed_steps": len(seconds), "seconds": total, "steps_per_s": len(seconds) / total,
                           "step_seconds_median": statistics.median(seconds), "step_seconds": seconds}  # fmt: skip
    for name, amount in per_step.items():
        out[f"{name}_per_s"] = amount * len(seconds) / total
    return out


# ---- models ----------------------------------------------------------------------------------------
def load_model(spec: dict[str, Any], kind: str, pad_id: int) -> Any:
    """The causal LM (`kind` "lm") or a one-logit sequence classifier ("rm") on the spec's device, in the
    weights' dtype of its precision; random weights from SMOLLM2_135M with `model_from_config`."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    dtype = torch.bfloat16 if spec["precision"] == "bfloat16" else torch.float32
    extra = {"num_labels": 1} if kind == "rm" else {}
    if spec["model_from_config"]:
        torch.manual_seed(0)
        cls = LlamaForSequenceClassification if kind == "rm" else LlamaForCausalLM
        with torch.device(spec["device"]):
            model = cls(LlamaConfig(**SMOLLM2_135M, **extra)).to(dtype)
    else:
        cls = AutoModelForSequenceClassification if kind == "rm" else AutoModelForCausalLM
        model = cls.from_pretrained(spec["model"], dtype=dtype, **extra).to(spec["device"])
    model.config.pad_token_id = pad_id
    return model


def config_check(folder: str) -> dict[str, Any]:
    """SMOLLM2_135M's keys that differ from the model folder's config.json (empty: they agree)."""
    config = json.loads((Path(folder) / "config.json").read_text())

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-6)
        return a == b

    return {
        k: {"benchmark": v, "folder": config.get(k)}
        for k, v in SMOLLM2_135M.items()
        if not same(v, config.get(k))
    }


# ---- jobs ------------------------------------------------------------------------------------------
def trl_args(spec: dict[str, Any], cls: Any, output_dir: str, **extra: Any) -> Any:
    steps = spec["warmup"] + spec["steps"]
    return cls(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=spec["batch"],
        learning_rate=1e-6, max_length=spec["max_length"], logging_steps=steps, save_strategy="no",
        report_to=[], use_cpu=spec["device"] == "cpu", bf16=spec["precision"] == "amp-bf16",
        gradient_checkpointing=spec["gradient_checkpointing"], disable_tqdm=True, seed=0, **extra,
    )  # fmt: skip


def step_clock(device: str) -> Any:
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """The time at the start of training and at the end of each optimizer step."""

        def __init__(self) -> None:
            self.start, self.ends = 0.0, []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = clock(device)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(clock(device))

    return StepClock()


def run_trl(spec: dict[str, Any], job: str, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """rm-trl / rm-charter / dpo-trl / dpo-charter: `warmup` + `steps` optimizer steps through TRL's
    trainer; the timed figure is from the end of the last warm-up step to the end of the last step."""
    from charter.trainer.dpo import SoftDPOTrainer, dpo_dataset
    from charter.trainer.reward import SoftRewardTrainer, reward_dataset
    from datasets import Dataset

    rows = needed(rows, spec["batch"] * (spec["warmup"] + spec["steps"]))
    plain = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    timer = step_clock(spec["device"])
    with tempfile.TemporaryDirectory(prefix="charter-bench-train-") as tmp:
        if job.startswith("rm"):
            from trl import RewardConfig, RewardTrainer

            model = load_model(spec, "rm", tokenizer.pad_token_id)
            trainer_cls, dataset = (
                (RewardTrainer, Dataset.from_list(plain))
                if job == "rm-trl"
                else (SoftRewardTrainer, reward_dataset(rows))
            )
            trainer = trainer_cls(
                model=model, args=trl_args(spec, RewardConfig, tmp), train_dataset=dataset,
                processing_class=tokenizer, callbacks=[timer],
            )  # fmt: skip
        else:
            from trl import DPOConfig, DPOTrainer

            model = load_model(spec, "lm", tokenizer.pad_token_id)
            reference = copy.deepcopy(model).requires_grad_(False).eval()
            trainer_cls, dataset = (
                (DPOTrainer, Dataset.from_list(plain))
                if job == "dpo-trl"
                else (SoftDPOTrainer, dpo_dataset(rows))
            )
            trainer = trainer_cls(
                model=model, ref_model=reference, args=trl_args(spec, DPOConfig, tmp, beta=0.1),
                train_dataset=dataset, processing_class=tokenizer, callbacks=[timer],
            )  # fmt: skip
        memory = Memory(spec["device"])
        trainer.train()
        peak = memory.stop()
    ends = timer.ends
    if len(ends) != spec["warmup"] + spec["steps"]:
        raise SystemExit(f"{job}: {len(ends)} optimizer steps, {spec['warmup'] + spec['steps']} expected")
    timed = [b - a for a, b in zip(ends[spec["warmup"] - 1 :], ends[spec["warmup"] :], strict=False)]
    pair_tokens = statistics.fmean(r["tokens"][1] + r["tokens"][2] for r in rows)
    result = rates(timed, {"pairs": spec["batch"], "tokens": spec["batch"] * pair_tokens})
    result.update(warmup_seconds=ends[spec["warmup"] - 1] - timer.start, memory=peak)
    del trainer, model
    return result


def run_ppo(spec: dict[str, Any], tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`ppo_warmup` + `ppo_steps` PPO steps (rollout, then update), then the plain forward + backward
    baseline on the last rollout's sequences."""
    import torch
    from accelerate import Accelerator
    from charter.trainer.ppo import PolicyWithValueHead, PPOConfig, PPOTrainer, RewardModelScorer

    device, batch, new_tokens = spec["device"], spec["ppo_batch"], spec["new_tokens"]
    prompts = [
        tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows
    ]
    config = PPOConfig(
        learning_rate=1e-6, rollout_batch_size=batch, mini_batch_size=spec["ppo_mini_batch"],
        ppo_epochs=spec["ppo_epochs"], max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        max_prompt_length=spec["max_length"] - new_tokens, seed=0,
    )  # fmt: skip
    policy = PolicyWithValueHead(load_model(spec, "lm", tokenizer.pad_token_id))
    scorer = RewardModelScorer(load_model(spec, "rm", tokenizer.pad_token_id), tokenizer, batch_size=batch)
    phases: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = clock(device)
            out = fn(*args, **kwargs)
            phases[name] = phases.get(name, 0.0) + clock(device) - started
            return out

        return call

    policy.pretrained.generate = timed("generate", policy.pretrained.generate)
    mixed = "bf16" if spec["precision"] == "amp-bf16" else "no"
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed)
    trainer = PPOTrainer(policy, None, tokenizer, timed("score", scorer), config, accelerator)
    memory = Memory(device)
    steps: list[dict[str, float]] = []
    rollout = None
    for i in range(spec["ppo_warmup"] + spec["ppo_steps"]):
        batch_prompts = [prompts[(i * batch + k) % len(prompts)] for k in range(batch)]
        phases.clear()
        started = clock(device)
        rollout = trainer.rollout(batch_prompts)
        rolled = clock(device)
        metrics = trainer.step(rollout)
        done = clock(device)
        steps.append({
            "rollout_s": rolled - started, "generate_s": phases["generate"], "score_s": phases["score"],
            "rollout_forward_s": rolled - started - phases["generate"] - phases["score"],
            "update_s": done - rolled, "step_s": done - started,
            "prompt_tokens_padded": float(rollout.query_ids.shape[1]),
            "response_length": metrics["response_length"],
        })  # fmt: skip
    peak = memory.stop()
    assert rollout is not None
    timed_steps = steps[spec["ppo_warmup"] :]
    sequence = statistics.fmean(s["prompt_tokens_padded"] for s in timed_steps) + new_tokens
    result = rates([s["step_s"] for s in timed_steps], {"prompts": batch, "tokens": batch * sequence})
    optimizer_steps = spec["ppo_epochs"] * batch // spec["ppo_mini_batch"]
    update = sum(s["update_s"] for s in timed_steps)
    result.update(
        optimizer_steps_per_ppo_step=optimizer_steps,
        optimizer_steps_per_s=optimizer_steps * len(timed_steps) / update,
        split={k: sum(s[k] for s in timed_steps) / len(timed_steps)
               for k in ("rollout_s", "generate_s", "score_s", "rollout_forward_s", "update_s", "step_s")},
        steps=steps, memory=peak,
    )  # fmt: skip
    result["split"]["rollout_share"] = result["split"]["rollout_s"] / result["split"]["step_s"]

    # baseline: one epoch of plain causal-LM training over the last rollout's sequences
    model = trainer.unwrapped.pretrained
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.cat([rollout.query_ids, rollout.response_ids], dim=1)
    mask = torch.cat([rollout.query_mask, rollout.response_mask.long()], dim=1)
    labels = ids.masked_fill(mask == 0, -100)
    epochs = []
    for _ in range(spec["ppo_warmup"] + spec["ppo_steps"]):
        started = clock(device)
        for idx in torch.arange(batch, device=ids.device).split(spec["ppo_mini_batch"]):
            with accelerator.autocast():
                loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        epochs.append(clock(device) - started)
    plain = statistics.fmean(epochs[spec["ppo_warmup"] :])
    result["plain_forward_backward"] = {
        "what": "one epoch of causal-LM loss + backward + AdamW over the rollout's sequences, same "
        "mini-batches (no value head, no generation, no reference)",
        "sequences": batch, "tokens": int(ids.numel()), "epoch_seconds": plain, "epoch_seconds_all": epochs,
        "optimizer_steps_per_s": (batch // spec["ppo_mini_batch"]) / plain,
    }  # fmt: skip
    result["ratios"] = {
        "ppo_step_over_plain_epoch": result["split"]["step_s"] / plain,
        "update_over_plain_epochs": result["split"]["update_s"] / (spec["ppo_epochs"] * plain),
        "rollout_over_plain_epoch": result["split"]["rollout_s"] / plain,
    }
    return result


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if spec["device"] == "cpu":
        torch.set_num_threads(spec["threads"])
    tokenizer = load_tokenizer(spec["tokenizer"])
    with open(spec["rows_file"], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    out = {}
    for job in spec["jobs"]:
        started = time.perf_counter()
        result = run_ppo(spec, tokenizer, rows) if job == "ppo" else run_trl(spec, job, tokenizer, rows)
        result["job_wall_seconds"] = time.perf_counter() - started
        out[job] = result
        print(
            f"[train] {spec['precision']} {job}: {json.dumps(summary_of(result))}",
            file=sys.stderr,
            flush=True,
        )
        gc.collect()
        if spec["device"] == "cuda":
            torch.cuda.empty_cache()
    return out


def summary_of(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("steps_per_s", "pairs_per_s", "prompts_per_s", "tokens_per_s")
    short = {k: round(result[k], 3) for k in keys if k in result}
    memory = result["memory"]
    short["peak_mb"] = round(memory.get("cuda_max_allocated_mb", memory["peak_rss_mb"]))
    return short


# ---- report ----------------------------------------------------------------------------------------
def machine(device: str, threads: int) -> dict[str, Any]:
    import importlib.metadata as md

    import psutil
    import torch

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
    ).stdout.strip()
    out: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpus": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": list(os.getloadavg()),
        "torch_threads": threads if device == "cpu" else torch.get_num_threads(),
        "versions": {n: version(n) for n in ("charter", "torch", "transformers", "trl", "accelerate",
                                               "datasets")},
        "commit": commit or None,
    }  # fmt: skip
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = torch.version.cuda
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", help="comma-separated: float32, bfloat16, amp-bf16 (GPU); "
                        "default float32 on the CPU, bfloat16,amp-bf16 on a GPU")  # fmt: skip
    parser.add_argument("--jobs", default="rm,dpo,ppo", help="comma-separated: rm, dpo, ppo")
    parser.add_argument("--steps", type=int, help="timed optimizer steps (RM, DPO)")
    parser.add_argument("--warmup", type=int, help="untimed optimizer steps first (RM, DPO); >= 1")
    parser.add_argument("--batch", type=int, help="pairs per optimizer step (RM, DPO)")
    parser.add_argument("--ppo-steps", type=int, help="timed PPO steps (rollout + update)")
    parser.add_argument("--ppo-warmup", type=int, help="untimed PPO steps first; >= 1")
    parser.add_argument("--ppo-batch", type=int, help="prompts per rollout")
    parser.add_argument("--ppo-mini-batch", type=int, help="sequences per PPO optimizer step")
    parser.add_argument("--ppo-epochs", type=int, help="passes over each rollout")
    parser.add_argument("--new-tokens", type=int, help="completion tokens per rollout sequence")
    parser.add_argument("--max-length", type=int, default=256, help="prompt + response tokens, at most")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                        help="TRL's default (on, as Charter's trainer runs) off for RM and DPO")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument(
        "--process-per", choices=("job", "precision"), default="job",
        help="one child process per job (default: each job's own peak memory, no warm caches from the job "
        "before) or one per precision (quicker; the second of a pair runs on shapes the first warmed up)",
    )  # fmt: skip
    parser.add_argument("--model", help="a Hugging Face model folder (default: the embedded model)")
    parser.add_argument("--model-from-config", action="store_true",
                        help="random weights from SmolLM2-135M's config instead of loading --model")  # fmt: skip
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    parser.add_argument("--rows", type=Path, help="preference rows JSONL (default: the shared hh-rlhf file)")
    parser.add_argument("--write-rows", type=Path, help="write the rows that fit --max-length, then exit")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    for name, value in DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    precisions = args.precision.split(",")
    unknown = [p for p in precisions if p not in PRECISIONS] + [
        j for j in args.jobs.split(",") if j not in JOBS
    ]
    if unknown:
        raise SystemExit(
            f"unknown --precision or --jobs values {unknown}; known: {PRECISIONS}, {tuple(JOBS)}"
        )
    jobs = [job for name in args.jobs.split(",") for job in JOBS[name]]
    if min(args.warmup, args.ppo_warmup) < 1 or min(args.steps, args.ppo_steps) < 1:
        raise SystemExit(f"need at least one warm-up and one timed step ({args.warmup=}, {args.steps=}, "
                         f"{args.ppo_warmup=}, {args.ppo_steps=})")  # fmt: skip
    if args.device == "cpu" and "amp-bf16" in precisions:
        raise SystemExit("--precision amp-bf16 needs --device cuda")
    if args.ppo_batch % args.ppo_mini_batch:
        raise SystemExit(
            f"--ppo-mini-batch must divide --ppo-batch ({args.ppo_batch=}, {args.ppo_mini_batch=})"
        )
    if args.new_tokens >= args.max_length:
        raise SystemExit(
            f"--new-tokens must leave room for a prompt ({args.new_tokens=}, {args.max_length=})"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.model is None and not args.model_from_config:
        from charter.inference.models import prepare

        # float32, as the trainer's worker prepares it: the cache holds one dtype, another converts again
        args.model = str(prepare("embedded", dtype="float32"))
    tokenizer_dir = args.tokenizer or args.model
    if tokenizer_dir is None:
        raise SystemExit("--model-from-config needs --tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    rows = select_rows(args.rows, tokenizer, args.max_length)
    if args.write_rows:
        with args.write_rows.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows)
        print(f"{len(rows)} rows -> {args.write_rows}")
        return
    out_path = args.out or ROOT / "benchmarks" / "results" / f"train-{args.device}.json"
    count = max(args.batch * (args.warmup + args.steps), args.ppo_batch * (args.ppo_warmup + args.ppo_steps))
    rows = needed(rows, count)
    spec_base = {
        k: v for k, v in vars(args).items() if k not in ("rows", "write_rows", "out", "child", "process_per")
    }
    config = run_config(args, precisions, jobs, rows)
    host = machine(args.device, args.threads)
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    env = {
        **os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="charter-bench-train-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for precision in precisions:
            results[precision] = {}
            # per job: the process's peak RSS is the job's; per precision: CUDA's peaks are reset per job
            groups = [[job] for job in jobs] if args.process_per == "job" else [jobs]
            for group in groups:
                spec = {**spec_base, "precision": precision, "jobs": group, "tokenizer": tokenizer_dir,
                        "rows_file": str(rows_file)}  # fmt: skip
                print(f"[train] {precision} {','.join(group)} ...", file=sys.stderr, flush=True)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True,
                    env=env,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise SystemExit(f"{precision} {','.join(group)} failed (exit {proc.returncode})")
                results[precision].update(json.loads(proc.stdout.strip().splitlines()[-1]))
                done = all(set(jobs) <= set(results.get(p, {})) for p in precisions)
                report = {
                    "benchmark": "train", "complete": done, "machine": host, "config": config,
                    "results": results, "ratios": ratios_of(results, args.device),
                    "wall_seconds": time.perf_counter() - started,
                }  # fmt: skip
                # written after each group, so a run cut short still leaves its figures
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios_of(results, args.device), indent=2))
    print(table(results))


def ratios_of(results: dict[str, dict[str, Any]], device: str) -> dict[str, dict[str, float]]:
    """Charter over the TRL baseline for RM and DPO — seconds per step over all timed steps, the median
    of the step-by-step ratios (robust to a one-off stall in either run), peak memory — and PPO's."""
    ratios: dict[str, dict[str, float]] = {}
    key = "cuda_max_allocated_mb" if device == "cuda" else "peak_rss_mb"
    for precision, got in results.items():
        r: dict[str, float] = {}
        for name in ("rm", "dpo"):
            base, ours = got.get(f"{name}-trl"), got.get(f"{name}-charter")
            if base and ours:
                # both runs see the same batches in the same order (same seed): step i has the same shapes
                paired = [b / a for a, b in zip(base["step_seconds"], ours["step_seconds"], strict=True)]
                r[f"{name}_charter_over_trl_step_seconds"] = base["steps_per_s"] / ours["steps_per_s"]
                r[f"{name}_charter_over_trl_step_seconds_paired_median"] = statistics.median(paired)
                r[f"{name}_charter_over_trl_peak_memory"] = ours["memory"][key] / base["memory"][key]
        if "ppo" in got:
            r.update({f"ppo_{k}": v for k, v in got["ppo"]["ratios"].items()})
            r["ppo_rollout_share"] = got["ppo"]["split"]["rollout_share"]
        ratios[precision] = r
    return ratios


def run_config(
    args: argparse.Namespace, precisions: list[str], jobs: list[str], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    pair_tokens = [r["tokens"][1] + r["tokens"][2] for r in rows]
    model = (
        "SmolLM2-135M-Instruct, random weights from its config (SMOLLM2_135M)"
        if args.model_from_config
        else f"SmolLM2-135M-Instruct (embedded, {args.model})"
    )
    return {
        "device": args.device, "precisions": precisions, "jobs": jobs, "max_length": args.max_length,
        "steps": args.steps, "warmup": args.warmup, "batch_pairs": args.batch, "ppo_steps": args.ppo_steps,
        "ppo_warmup": args.ppo_warmup, "ppo_batch": args.ppo_batch, "ppo_mini_batch": args.ppo_mini_batch,
        "ppo_epochs": args.ppo_epochs, "new_tokens": args.new_tokens,
        "gradient_checkpointing_rm_dpo": args.gradient_checkpointing, "process_per": args.process_per,
        "model": model, "config_differences": {} if args.model_from_config else config_check(args.model),
        "learning_rate": 1e-6, "optimizer": "AdamW (torch; TRL's default for RM and DPO)",
        "workload": f"hh-rlhf harmless-base-test-dev pairs with prompt + response <= {args.max_length} "
        f"tokens on both sides (chat template), file order; soft labels cycling {SOFT_LABELS}",
        "rows_used": len({r["label_id"] for r in rows}),
        "pair_tokens": {"mean": statistics.fmean(pair_tokens), "min": min(pair_tokens), "max": max(pair_tokens),
                        "what": "prompt + chosen plus prompt + rejected"},
    }  # fmt: skip


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| precision | job | steps/s | samples/s | tokens/s | peak memory MB |",
        "|---|---|---|---|---|---|",
    ]
    for precision, got in results.items():
        for job, r in got.items():
            samples = r.get("pairs_per_s", r.get("prompts_per_s", 0.0))
            memory = r["memory"]
            peak = memory.get("cuda_max_allocated_mb", memory["peak_rss_mb"])
            lines.append(f"| {precision} | {job} | {r['steps_per_s']:.3f} | {samples:.2f} | "
                         f"{r['tokens_per_s']:.0f} | {peak:.0f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()

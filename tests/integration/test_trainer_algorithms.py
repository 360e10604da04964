"""Every algorithm as a trainer-service run, with real worker processes and tiny models: a reward
model first, then SFT on SL-CAI-style rows, DPO, and PPO / GRPO / RLOO with that reward-model run
(named by its id) as the reward. PPO samples its rollouts on a generator service (the transformers
engine, in this process) with its weights pushed there after each update (`rollout_generator`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from charter.api.common import conversation_proto
from charter.app.local import local_services
from charter.client.generator import GeneratorClient
from charter.core.settings import load_settings
from charter.inference.types import Message
from charter.trainer.data import from_files
from charter_proto.generator.v1 import generator_pb2
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import HH_DEV
from tests.support.tiny import save_tiny_lm
from tests.support.trainer import run_spec, trainer_service, trainer_settings, watch

pytestmark = pytest.mark.integration

COMMON = {"learning_rate": 1e-3, "logging_steps": 1, "save_steps": 1000}


def sft_file(tmp_path: Path) -> str:
    """SL-CAI's output format: `messages` = the conversation ending in the revised reply."""
    path = tmp_path / "sft.jsonl"
    rows = from_files([HH_DEV]).rows[:16]
    path.write_text("".join(json.dumps({"messages": r["prompt"] + r["chosen"]}) + "\n" for r in rows))
    return str(path)


@pytest.mark.timeout(600)
async def test_every_algorithm_as_a_service_run(tmp_path, embedded_model):
    lm = save_tiny_lm(tmp_path / "lm", embedded_model)
    hh = [str(HH_DEV)]
    generator_settings = load_settings(
        inference={"engine": "transformers", "model": str(lm), "dtype": "float32", "threads": 1, "max_model_len": 512}
    )
    async with (
        trainer_service(trainer_settings(tmp_path)) as stub,
        local_services(generator_settings, ["generator"]) as generator,
    ):

        async def run(spec: tp.RunSpec) -> tuple[tp.Run, list[tp.RunEvent]]:
            started = (await stub.StartRun(tp.StartRunRequest(spec=spec))).run
            events = await watch(stub, started.id, timeout=500)
            done = (await stub.GetRun(tp.GetRunRequest(run_id=started.id))).run
            assert done.state == tp.RUN_STATE_SUCCEEDED, (done.spec.name, done.reason)
            return done, events

        rm, _ = await run(
            run_spec(tp.ALGORITHM_REWARD_MODEL, lm, files=hh, name="rm", max_steps=2, per_device_train_batch_size=4,
                     max_length=96, **COMMON)
        )  # fmt: skip
        specs = [
            run_spec(tp.ALGORITHM_SFT, lm, files=[sft_file(tmp_path)], name="sft", max_steps=2,
                     per_device_train_batch_size=2, max_length=128, **COMMON),
            run_spec(tp.ALGORITHM_DPO, lm, files=hh, name="dpo", max_steps=2, per_device_train_batch_size=2,
                     max_length=96, beta=0.1, **COMMON),
            run_spec(tp.ALGORITHM_PPO, lm, files=hh, reward_model=rm.id, name="ppo", total_steps=2, save_steps=1,
                     rollout_batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=6, max_prompt_length=64,
                     learning_rate=1e-4, rollout_generator=generator),
            run_spec(tp.ALGORITHM_GRPO, lm, files=hh, reward_model=rm.id, name="grpo", max_steps=2,
                     per_device_train_batch_size=2, num_generations=2, max_completion_length=6,
                     gradient_checkpointing=False, **COMMON),
            run_spec(tp.ALGORITHM_RLOO, lm, files=hh, reward_model=rm.id, name="rloo", max_steps=2,
                     per_device_train_batch_size=2, num_generations=2, max_completion_length=6,
                     gradient_checkpointing=False, **COMMON),
        ]  # fmt: skip
        results = await asyncio.gather(*(run(s) for s in specs))
        async with GeneratorClient(generator, timeout=60) as client:
            [reply] = await client.generate(
                generator_pb2.GenerateRequest(prompts=[conversation_proto([Message(role="user", content="Hi.")])])
            )
    # the last rollout (step 1) sampled from the weights the worker pushed after its first update
    assert reply.model.policy_version.startswith(f"{results[2][0].id}/step-1@sha256:")
    for (done, events), spec in zip(results, specs, strict=True):
        metrics = [e.metrics for e in events if e.WhichOneof("kind") == "metrics"]
        assert done.total_steps == 2 and done.step == 2, spec.name
        assert (Path(done.output_dir) / "config.json").exists(), spec.name
        if spec.name == "ppo":
            assert {"reward_mean", "kl", "entropy", "clip_fraction", "value_loss"} <= set(done.last_metrics)
            assert [c.checkpoint.step for c in events if c.WhichOneof("kind") == "checkpoint"] == [1, 2]
            assert (Path(done.output_dir) / "value_head.safetensors").exists()
        elif spec.name in ("grpo", "rloo"):
            rewards = [m.values["reward"] for m in metrics if "reward" in m.values]
            assert len(rewards) == 2, spec.name
        else:
            assert [m.step for m in metrics if "loss" in m.values] == [1, 2], spec.name
    ppo = results[2][0]
    assert ppo.spec.reward_model == rm.output_dir  # the run id was resolved to the model folder

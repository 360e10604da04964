"""GRPO's and RLOO's rollouts sampled on the generator service (`rollout_generator`): a real gRPC
generator in this process on the transformers engine serving a tiny model built from a config; TRL's
trainers push the policy to it before each generation and train on what it sampled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from charter.api.trainer import spec_from_proto
from charter.app.generator_sampler import GeneratorSampler
from charter.app.local import local_services
from charter.client.generator import GeneratorClient
from charter.core.errors import InvalidArgument
from charter.core.settings import load_settings
from charter.trainer.online import online_trainer
from charter.trainer.online_sampling import check_config, conversations
from charter.trainer.rollouts import Sample, completion_rows
from charter.trainer.spec import check, trl_config
from charter_proto.generator.v1 import generator_pb2
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.struct_pb2 import Struct

from tests.support import tiny
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration

PROMPTS = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(4)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("online-rollouts")
    lm = tiny.save_tiny_lm(root / "lm", embedded_model, seed=0)
    return lm, tiny.save_tiny_reward_model(root / "rm", embedded_model, seed=1)


class Recording(GeneratorSampler):
    """Keeps what each `sample` call was asked and answered."""

    calls: list[tuple[list[str], int, list[Sample]]]

    def sample(self, prompts, step, process=0):  # type: ignore[no-untyped-def]
        out = super().sample(prompts, step, process)
        self.calls.append((list(prompts), step, out))
        return out


def hyperparameters(algorithm: str, address: str) -> dict[str, Any]:
    per_device = {"grpo": 8, "rloo": 4}[algorithm]
    return {
        "rollout_generator": address, "num_generations": 4, "per_device_train_batch_size": per_device,
        "max_completion_length": 8, "max_steps": 2, "learning_rate": 1e-2, "logging_steps": 1,
        "save_strategy": "no", "gradient_checkpointing": False, "temperature": 1.0, "beta": 0.0,
    }  # fmt: skip


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
async def test_the_online_trainers_sample_on_the_generator_with_the_weights_they_pushed(
    algorithm: str, folders: tuple[Path, Path], embedded_model: Path, tmp_path: Path
) -> None:
    lm, rm = folders
    settings = load_settings(
        inference={"engine": "transformers", "model": str(lm), "dtype": "float32", "threads": 1,
                   "max_model_len": 512},
    )  # fmt: skip
    async with local_services(settings, ["generator"]) as address:
        config = trl_config(
            algorithm, hyperparameters(algorithm, address), output_dir=str(tmp_path), seed=0, use_cpu=True
        )
        assert not hasattr(config, "rollout_generator")  # Charter's setting, not handed to TRL

        def train() -> tuple[Recording, Any, dict[str, torch.Tensor]]:
            torch.manual_seed(0)
            torch.set_num_threads(1)
            sampler = Recording(address, conversations(PROMPTS), check_config(config), run=f"r-{algorithm}")
            sampler.calls = []
            policy = causal_lm(lm)
            trainer = online_trainer(
                algorithm, policy, tiny.tokenizer(embedded_model), rm, PROMPTS, config, sampler=sampler
            )
            trainer.train()
            sampler.close()
            final = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
            return sampler, trainer, final

        sampler, trainer, final = await asyncio.to_thread(train)
        async with GeneratorClient(address, timeout=60) as client:  # what it serves once the run is over
            request = generator_pb2.GenerateRequest(prompts=list(sampler.conversations.values())[:1])
            [served] = await client.generate(request)

    # one push before each generation, each step's weights under the run's name
    versions = [p.model.policy_version for p in sampler.pushed]
    assert [v.split("@")[0] for v in versions] == [f"r-{algorithm}/step-0", f"r-{algorithm}/step-1"]
    assert versions[0] != versions[1] and served.model.policy_version == versions[1]
    initial = dict(causal_lm(lm).named_parameters())
    assert any(not torch.equal(final[k], initial[k]) for k in initial)  # the update moved the policy

    tokenizer = tiny.tokenizer(embedded_model)
    lengths = [entry["completions/mean_length"] for entry in trainer.state.log_history if "loss" in entry]
    assert [step for _, step, _ in sampler.calls] == [0, 1] and len(lengths) == 2
    for (keys, _, samples), logged in zip(sampler.calls, lengths, strict=True):
        per_prompt = config.per_device_train_batch_size // config.num_generations
        assert len(keys) == config.per_device_train_batch_size and len(set(keys)) == per_prompt
        # each prompt's group: num_generations separate draws, not one sample repeated
        for key in set(keys):
            group = [s.text for k, s in zip(keys, samples, strict=True) if k == key]
            assert len(group) == config.num_generations and len(set(group)) > 1
        # TRL trained on the generator's completions, tokenised again
        rows = completion_rows(samples, tokenizer, config.max_completion_length, tokenizer.eos_token_id)
        assert logged == pytest.approx(sum(map(len, rows)) / len(rows))


def causal_lm(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"top_k": 5}, "top_k"), ({"repetition_penalty": 1.2}, "repetition_penalty"), ({"use_vllm": True}, "use_vllm")],
)
def test_a_setting_the_generator_cannot_sample_with_is_refused_at_the_spec(
    extra: dict[str, Any], field: str, tmp_path: Path
) -> None:
    values = {"rollout_generator": "localhost:1", "num_generations": 2, "per_device_train_batch_size": 2, **extra}
    with pytest.raises(InvalidArgument) as err:
        trl_config("grpo", values, output_dir=str(tmp_path), seed=0, use_cpu=True)
    assert err.value.field == f"spec.hyperparameters.{field}"
    trl_config("grpo", {k: v for k, v in values.items() if k != "rollout_generator"},
               output_dir=str(tmp_path), seed=0, use_cpu=True)  # fmt: skip  # without a generator: TRL's own
    with pytest.raises(InvalidArgument, match="host:port"):
        trl_config("rloo", {"rollout_generator": 5}, output_dir=str(tmp_path), seed=0, use_cpu=True)


def test_a_service_spec_with_a_rollout_generator_checks_like_the_rest(folders: tuple[Path, Path]) -> None:
    lm, rm = folders
    hp = Struct()
    hp.update({"rollout_generator": "generator:50051", "num_generations": 2, "per_device_train_batch_size": 2})
    spec = tp.RunSpec(
        name="grpo-on-generator", algorithm=tp.ALGORITHM_GRPO, base_model=str(lm), reward_model=str(rm),
        data=tp.DataSource(files=tp.FileSource(paths=[str(HH_DEV)])), hyperparameters=hp,
    )  # fmt: skip
    checked = check(spec_from_proto(spec))
    assert checked.hyperparameters["rollout_generator"] == "generator:50051"
    assert checked.config.num_generations == 2

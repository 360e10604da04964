"""Weights pushed into the generator (`PushWeights`) and PPO's rollouts sampled there: a real gRPC
server in this process on the transformers engine, tiny models built from configs with the embedded
tokenizer. A "silent" copy (final norm zeroed: every logit 0, greedy writes token 0, a special token,
so its replies are empty) tells pushed weights from the served ones."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import grpc
import pytest
import torch
from charter.api.common import conversation_proto
from charter.app.local import local_services
from charter.client.generator import GeneratorClient
from charter.core.errors import InvalidArgument
from charter.core.settings import CharterSettings, load_settings
from charter.inference.types import Message
from charter.trainer.ppo import PolicyWithValueHead, PPOConfig, PPOTrainer
from charter_proto.common.v1 import sampling_pb2
from charter_proto.generator.v1 import generator_pb2

from tests.support import tiny

pytestmark = pytest.mark.integration

PROMPTS = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(4)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path) -> Path:
    return tiny.save_tiny_lm(tmp_path_factory.mktemp("push") / "lm", embedded_model, seed=0)


def settings_for(model: Path) -> CharterSettings:
    return load_settings(
        inference={"engine": "transformers", "model": str(model), "dtype": "float32", "threads": 1,
                   "max_model_len": 512},
    )  # fmt: skip


def loaded(model: Path) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model, dtype=torch.float32)


def silenced(lm: torch.nn.Module) -> torch.nn.Module:
    out = copy.deepcopy(lm)
    with torch.no_grad():
        out.model.norm.weight.zero_()
    return out


def request(i: int = 0) -> generator_pb2.GenerateRequest:
    prompt = conversation_proto([Message(role="user", content=f"Say something, number {i}.")], f"p{i}")
    return generator_pb2.GenerateRequest(prompts=[prompt], sampling=sampling_pb2.SamplingParams(max_tokens=8))


async def test_pushed_weights_serve_every_call_after_the_push(model: Path) -> None:
    lm = loaded(model)
    async with (
        local_services(settings_for(model), ["generator"]) as address,
        GeneratorClient(address, timeout=60) as client,
    ):
        [first] = await client.generate(request())
        assert first.completion.text != ""
        version_a = first.model.policy_version

        stop, done = asyncio.Event(), []

        async def caller(k: int) -> None:  # calls in flight across the push all succeed
            i = 0
            while not stop.is_set():
                replies = await client.generate(request(100 * k + i))
                done.extend((r.model.policy_version, r.completion.text) for r in replies)
                i += 1

        callers = [asyncio.create_task(caller(k)) for k in range(3)]
        while len(done) < 6:
            await asyncio.sleep(0.01)
        pushed = await client.push_weights(dict(silenced(lm).named_parameters()), "ppo/step-1", "push-1")
        count = len(done)
        while len(done) < count + 6:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*callers)
        [silent] = await client.generate(request())
        back = await client.push_weights(dict(lm.named_parameters()), "ppo/step-2")
        [again] = await client.generate(request())

    version_b = pushed.model.policy_version
    assert pushed.previous.policy_version == version_a
    assert version_b.startswith("ppo/step-1@sha256:") and pushed.tensors == len(list(lm.parameters()))
    assert pushed.bytes > 0 and pushed.paused_seconds >= 0
    assert {v for v, _ in done} == {version_a, version_b}
    for version, text in done:  # each reply from the weights its version names
        assert (version == version_b) == (text == ""), (version, text)
    assert silent.model.policy_version == version_b and silent.completion.text == ""
    assert back.model.policy_version.startswith("ppo/step-2@sha256:") and back.previous.policy_version == version_b
    assert again.completion.text == first.completion.text  # greedy, float32: the same weights, the same text


async def test_a_push_that_does_not_fit_the_model_changes_nothing(
    model: Path, tmp_path: Path, embedded_model: Path
) -> None:
    from transformers import LlamaForCausalLM

    tok = tiny.tokenizer(embedded_model)
    other = LlamaForCausalLM(tiny.llama_config(tok, hidden_size=32, intermediate_size=64, tie_word_embeddings=True))
    params = dict(silenced(loaded(model)).named_parameters())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    async with (
        local_services(settings_for(model), ["generator"]) as address,
        GeneratorClient(address, timeout=60) as client,
    ):
        [before] = await client.generate(request())
        cases = [
            (dict(other.named_parameters()), "of another shape"),
            ({k: v for k, v in params.items() if k != "model.norm.weight"}, "1 missing (model.norm.weight)"),
            ({**params, "model.extra.weight": torch.zeros(2)}, "the served model does not have (model.extra.weight)"),
            (garbage, "not a safetensors file"),
        ]
        for weights, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.push_weights(weights, "bad")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.push_weights(params, "")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in err.value.details()
        [after] = await client.generate(request())
    assert after.model.policy_version == before.model.policy_version
    assert after.completion.text == before.completion.text != ""


async def test_an_engine_shared_with_other_services_refuses_pushes(model: Path) -> None:
    params = dict(loaded(model).named_parameters())
    async with (
        local_services(settings_for(model), ["generator", "judge"]) as address,
        GeneratorClient(address, timeout=60) as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.push_weights(params, "ppo/step-1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shares its engine" in err.value.details()


def test_ppo_config_refuses_sampling_the_generator_cannot_do() -> None:
    for extra in ({"top_k": 5}, {"min_new_tokens": 2}):
        with pytest.raises(InvalidArgument, match="rollout_generator"):
            PPOConfig.from_mapping({"rollout_generator": "localhost:1", **extra})


async def test_ppo_samples_its_rollouts_on_the_generator_with_the_weights_it_pushed(
    model: Path, embedded_model: Path
) -> None:
    from charter.app.generator_sampler import GeneratorSampler

    tok = tiny.tokenizer(embedded_model)
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in PROMPTS]

    sampled: list[list[str]] = []

    class Recording(GeneratorSampler):
        def sample(self, prompts, step, process=0):  # type: ignore[no-untyped-def]
            out = super().sample(prompts, step, process)
            sampled.append([s.text for s in out])
            return out

    def reward(prompts: list[str], completions: list[str], ids: list[list[int]]) -> list[float]:
        return [len(c) / 10 for c in completions]  # longer replies score higher

    async with local_services(settings_for(model), ["generator"]) as address:

        def train() -> tuple[Recording, list[list[str]], dict[str, torch.Tensor]]:
            torch.manual_seed(0)
            torch.set_num_threads(1)
            config = PPOConfig(
                rollout_generator=address, learning_rate=1e-3, rollout_batch_size=4, mini_batch_size=2,
                ppo_epochs=1, max_new_tokens=8, seed=0,
            )  # fmt: skip
            sampler = Recording(address, dict(zip(texts, PROMPTS, strict=True)), config.rollout_sampling(), run="r-test")
            policy = PolicyWithValueHead.from_pretrained(model, dtype=torch.float32)
            trainer = PPOTrainer(policy, None, tok, reward, config, sampler=sampler)
            completions = []
            for _ in range(2):  # what `train` does: a rollout, then the update
                rollout = trainer.rollout(texts)
                completions.append(rollout.completions)
                trainer.step(rollout)
            sampler.close()
            final = {k: v.detach().clone() for k, v in trainer.unwrapped.pretrained.named_parameters()}
            return sampler, completions, final

        sampler, completions, final = await asyncio.to_thread(train)
        async with GeneratorClient(address, timeout=60) as client:
            [reply] = await client.generate(request())
    initial = dict(loaded(model).named_parameters())

    versions = [p.model.policy_version for p in sampler.pushed]
    assert [v.split("@")[0] for v in versions] == ["r-test/step-0", "r-test/step-1"]
    assert sampler.pushed[1].previous.policy_version == versions[0] and versions[0] != versions[1]
    assert reply.model.policy_version == versions[1]  # the generator serves the last weights pushed
    assert any(not torch.equal(final[k], initial[k]) for k in initial)  # the update moved the policy
    # each rollout is what the generator sampled from that step's weights, tokenised again
    assert completions == sampled and all(len(c) == 4 for c in completions)


async def test_vllm_loads_pushed_weights_in_place(vllm_engine, embedded_model: Path, tmp_path: Path) -> None:
    """The in-process vLLM engine (shared by the session: its own weights go back in at the end)."""
    from charter.inference.types import ChatRequest, Sampling
    from charter.inference.weights import check_push
    from safetensors.torch import save_file

    chat = [ChatRequest(messages=(Message(role="user", content="Name a colour."),), sampling=Sampling(max_tokens=8))]
    [before] = await vllm_engine.chat(chat, timeout=300)
    lm = silenced(loaded(embedded_model))
    (tmp_path / "silent").mkdir()
    save_file({k: v.contiguous() for k, v in lm.named_parameters()}, tmp_path / "silent" / "model.safetensors")
    count = check_push(tmp_path / "silent", embedded_model)
    try:
        assert await vllm_engine.load_weights(str(tmp_path / "silent"), timeout=300) == count
        [silent] = await vllm_engine.chat(chat, timeout=300)
    finally:
        await vllm_engine.load_weights(str(embedded_model), timeout=300)
    [after] = await vllm_engine.chat(chat, timeout=300)
    assert before.completions[0].text != "" and silent.completions[0].text == ""
    assert after.completions[0].text == before.completions[0].text

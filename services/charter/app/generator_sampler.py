"""An online run's rollouts sampled by a generator service (`hyperparameters.rollout_generator`):
after each update the worker pushes the policy's weights to it (`PushWeights`, role admin) and asks it
for the next rollout's completions (`Generate`), so sampling runs on the serving engine (vLLM where
it is installed) instead of the policy's `generate`. The `Sampler` of `charter.trainer.rollouts`, for
Charter's PPO and for TRL's GRPO and RLOO.

A prompt that repeats in one call (GRPO's and RLOO's group of completions per prompt) is asked once
with `n` samples, so the group's completions are distinct draws; each process's seed differs.
Every reply must come from the weights just pushed: the generator tags each with its policy version,
and a reply from any other (someone swapped or pushed in between) fails the run rather than train on
another policy's samples. The admin token comes from `CHARTER_GENERATOR_TOKEN` or the file named by
`CHARTER_GENERATOR_TOKEN_FILE` (the service grants it for generators on `trainer.generator_addresses`).

Example:
    sampling = RolloutSampling(temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0)
    sampler = GeneratorSampler("generator:50051", conversations, sampling, run="r-1a2b")
    trainer = PPOTrainer(policy, None, tokenizer, scorer, config, sampler=sampler)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from charter_proto.common.v1 import sampling_pb2
from charter_proto.generator.v1 import generator_pb2
from torch import nn

from charter.api.common import conversation_proto
from charter.client.generator import GeneratorClient
from charter.core.auth import environment_token
from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.inference.types import MAX_SAMPLES, Message
from charter.trainer.rollouts import RolloutSampling, Sample

__all__ = ["GeneratorSampler", "generator_token", "online_sampler"]


def generator_token() -> str | None:
    return environment_token("CHARTER_GENERATOR_TOKEN") or None


class GeneratorSampler:
    """`conversations`: each prompt's key (PPO: its chat-templated text, as the trainer has it) -> its
    messages, which the generator renders with its own template; `run`: names the pushed weights
    (`<run>/step-<n>`)."""

    def __init__(
        self,
        address: str,
        conversations: Mapping[str, Sequence[Mapping[str, Any]]],
        sampling: RolloutSampling,
        *,
        run: str = "ppo",
        token: str | None = None,
        timeout: float = 3600.0,
    ) -> None:
        self.address, self.sampling, self.run = address, sampling, run
        self.conversations = {
            text: conversation_proto([Message(role=m["role"], content=m["content"]) for m in messages])
            for text, messages in conversations.items()
        }
        self.pushed: list[generator_pb2.PushWeightsResponse] = []
        """What each push answered (the versions served, bytes, how long calls were held)."""
        self._loop = asyncio.new_event_loop()
        self._client = self._loop.run_until_complete(self._connect(token, timeout))

    async def _connect(self, token: str | None, timeout: float) -> GeneratorClient:
        return GeneratorClient(self.address, token=token, timeout=timeout)

    def name(self, step: int) -> str:
        return f"{self.run}/step-{step}"

    def sync(self, model: nn.Module, step: int) -> None:
        push = self._client.push_weights(dict(model.named_parameters()), self.name(step))
        self.pushed.append(self._loop.run_until_complete(push))

    def sample(self, prompts: Sequence[str], step: int, process: int = 0) -> list[Sample]:
        missing = [p for p in prompts if p not in self.conversations]
        if missing:
            first = missing[0][:80]
            raise InvalidArgument(f"no conversation for {len(missing)} prompts (the first: {first!r})")
        where: dict[str, list[int]] = {}  # each distinct prompt -> its entries, in order
        for i, prompt in enumerate(prompts):
            where.setdefault(prompt, []).append(i)
        # one call per chunk of up to MAX_SAMPLES repeats of a prompt; prompts with as many repeats share it
        calls: dict[int, list[tuple[str, list[int]]]] = {}
        for prompt, entries in where.items():
            for start in range(0, len(entries), MAX_SAMPLES):
                chunk = entries[start : start + MAX_SAMPLES]
                calls.setdefault(len(chunk), []).append((prompt, chunk))

        async def every_call() -> list[list[generator_pb2.GenerateResponse]]:
            return await asyncio.gather(*(self._generate(n, g, step, process) for n, g in calls.items()))

        replies = self._loop.run_until_complete(every_call())
        out: list[Sample | None] = [None] * len(prompts)
        for group, answered in zip(calls.values(), replies, strict=True):
            for reply in answered:
                entries = group[reply.prompt_index][1]
                finish = reply.completion.finish_reason
                out[entries[reply.sample_index]] = Sample(
                    reply.completion.text, finish == sampling_pb2.FINISH_REASON_STOP
                )
        if any(s is None for s in out):
            raise FailedPrecondition(f"the generator at {self.address} left prompts without a reply")
        return [s for s in out if s is not None]

    async def _generate(
        self, n: int, group: list[tuple[str, list[int]]], step: int, process: int
    ) -> list[generator_pb2.GenerateResponse]:
        c = self.sampling
        seed = (((c.seed * 1_000_003 + step) * 1_009 + process) * 131 + n) % 2**63  # per process and call
        sampling = sampling_pb2.SamplingParams(
            n=n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_new_tokens, seed=seed
        )
        request = generator_pb2.GenerateRequest(
            prompts=[self.conversations[prompt] for prompt, _ in group], sampling=sampling
        )
        replies = await self._client.generate(request)
        want = self.name(step)
        for reply in replies:
            served = reply.model.policy_version.split("@sha256:", 1)[0]
            if served != want:
                raise FailedPrecondition(
                    f"the generator at {self.address} answered with {reply.model.policy_version}, not the "
                    f"weights pushed for step {step} ({want}): another client swapped or pushed its model"
                )
        return replies

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()


def online_sampler(
    address: str, prompts: Sequence[Sequence[Mapping[str, Any]]], config: Any, *, run: str, token: str | None
) -> GeneratorSampler:
    """The sampler of a GRPO or RLOO run (`config`: its GRPOConfig / RLOOConfig) on `prompts`."""
    from charter.trainer.online_sampling import check_config, conversations

    return GeneratorSampler(address, conversations(prompts), check_config(config), run=run, token=token)

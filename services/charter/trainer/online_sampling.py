"""GRPO's and RLOO's rollouts sampled by a `Sampler` (`charter.trainer.rollouts`: the generator
service, on vLLM where it is installed) instead of the policy's `generate`.

TRL's own vLLM modes do this inside TRL: `colocate` starts a second vLLM in the trainer's process and
`server` talks to `trl vllm-serve`, and both copy the weights through vLLM's internals (which changed
in vLLM 0.32: TRL 1.16's weight sync fails there). Charter's way goes through the serving engine a
deployment already runs, over the `PushWeights` RPC that every engine behind it implements:

- before a rollout whose weights changed (TRL's `global_step` moved), the main process pushes the
  policy (`Sampler.sync`), the others wait for it;
- every process asks the sampler for its slice of the batch: TRL's sampler repeats each prompt
  `num_generations` times, and each repeat is its own draw (`GeneratorSampler` asks for `n` samples);
- the texts come back and are tokenised again (`completion_rows`), as TRL's `generate` path gives
  them: cut at `max_completion_length`, the end-of-sequence token kept when the model stopped.

TRL then scores, computes the advantages and updates as always, with its own log-probabilities of
those tokens (no importance-sampling correction: the sampler's log-probabilities are not used).
The hooks are TRL's `_generate` (to see the prompts as messages, which the generator renders with its
own chat template) and `_generate_single_turn` (the generation itself); tool calls and images are
not supported this way.

Example::

    sampler = GeneratorSampler("generator:50051", {prompt_key(p): p for p in prompts}, sampling)
    trainer = online_trainer("grpo", policy, tokenizer, "runs/rm", prompts, config, sampler=sampler)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.trainer.rollouts import RolloutSampling, Sampler, completion_rows

UNSUPPORTED = {
    "use_vllm": False, "top_k": 0, "min_p": None, "repetition_penalty": 1.0, "generation_kwargs": None,
    "use_transformers_continuous_batching": False,
}  # fmt: skip
"""TRL settings a sampler does not do (it samples with temperature and top-p), with the only value
each may have when `rollout_generator` is set."""


def prompt_key(prompt: Sequence[Mapping[str, Any]]) -> str:
    """The key a prompt (its messages) has in a sampler's conversations."""
    return json.dumps(list(prompt), sort_keys=True, ensure_ascii=False)


def check_config(config: Any, field: str = "spec.hyperparameters") -> RolloutSampling:
    """How the sampler draws for a GRPOConfig / RLOOConfig; InvalidArgument for a setting it cannot do."""
    for name, allowed in UNSUPPORTED.items():
        value = getattr(config, name, allowed)
        if value != allowed and not (name == "top_k" and value is None):
            raise InvalidArgument(
                f"{field}.{name}: the rollout generator samples with temperature and top-p only; "
                f"leave {name} at {allowed!r} with rollout_generator",
                field=f"{field}.{name}",
                value=value,
            )
    if not config.max_completion_length:
        name = f"{field}.max_completion_length"
        raise InvalidArgument(f"{name}: the rollout generator needs a completion length", field=name)
    return RolloutSampling(
        temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=config.max_completion_length, seed=config.seed,
    )  # fmt: skip


def with_sampler(trainer_class: type, sampler: Sampler) -> type:
    """A subclass of TRL's GRPOTrainer or RLOOTrainer whose completions come from `sampler`."""
    returns_logprobs = trainer_class.__name__.startswith("GRPO")  # GRPO's hook returns (ids, logprobs)

    class SampledElsewhere(trainer_class):  # type: ignore[misc]
        _sampler = sampler
        _synced_step: int | None = None
        _messages: list[Any] = []

        def _generate(self, prompts: list[Any]) -> Any:
            self._messages = list(prompts)  # the same order as the prompt ids TRL tokenises from them
            return super()._generate(prompts)

        def _generate_single_turn(
            self, prompt_ids: list[list[int]], images: Any, *args: Any, **kwargs: Any
        ) -> Any:
            if images is not None and any(images):
                raise FailedPrecondition("rollout_generator: prompts with images are not supported")
            if len(prompt_ids) != len(self._messages):  # a tool call's second turn
                raise FailedPrecondition("rollout_generator: tool calls are not supported")
            step, acc = self.state.global_step, self.accelerator
            if self._synced_step != step:
                if acc.is_main_process:
                    self._sampler.sync(acc.unwrap_model(self.model), step)
                acc.wait_for_everyone()
                self._synced_step = step
            keys = [prompt_key(p) for p in self._messages]
            samples = self._sampler.sample(keys, step, acc.process_index)
            eos = self.processing_class.eos_token_id
            ids = completion_rows(samples, self.processing_class, self.args.max_completion_length, eos)
            return (ids, None) if returns_logprobs else ids

    SampledElsewhere.__name__ = SampledElsewhere.__qualname__ = f"Sampled{trainer_class.__name__}"
    return SampledElsewhere


def conversations(prompts: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Sequence[Mapping[str, Any]]]:
    """The sampler's conversations for an online run's prompts: `prompt_key` -> messages."""
    return {prompt_key(p): p for p in prompts}


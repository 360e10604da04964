"""Where an online run's rollouts are sampled: by the policy's own `generate` (the default), or by a
`Sampler`: a serving engine that holds a copy of the policy's weights (the generator service, on
vLLM where it is installed; `app.generator_sampler`). Charter's PPO (`ppo.trainer`) and TRL's GRPO
and RLOO (`online_sampling`) both take one.

With a sampler, the trainer pushes its weights to it after each update (`sync`) and asks it for one
completion per prompt entry (`sample`; GRPO's groups repeat a prompt, and each repeat is its own
sample). The completions come back as text and are tokenised again here, so the update sees the same
kind of token ids as with `generate`; the log-probabilities of the rollout are the trainer's own
(computed on those tokens before the update, as always), so the ratio of the first epoch is 1
exactly. What may differ from sampling in the trainer: the engine's numerics (bf16 kernels), and a
text whose tokens come out differently when tokenised again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn


@dataclass(frozen=True)
class Sample:
    text: str
    stopped: bool
    """Ended by the model (an end-of-sequence token), not cut off at `max_new_tokens`."""


@dataclass(frozen=True)
class RolloutSampling:
    """How a sampler draws the rollouts: the trainer's own settings (PPO's `temperature`, `top_p`,
    `max_new_tokens`; GRPO/RLOO's `temperature`, `top_p`, `max_completion_length`) and its seed."""

    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


class Sampler(Protocol):
    def sync(self, model: nn.Module, step: int) -> None:
        """Give the sampler the policy's weights after `step` updates (called on the main process
        before a rollout whenever the weights changed since the last sync)."""

    def sample(self, prompts: Sequence[str], step: int, process: int = 0) -> list[Sample]:
        """One completion per entry of `prompts` (keys the sampler knows; an entry that repeats gets a
        separate sample per repeat), sampled from the weights of `step` with the trainer's
        `RolloutSampling`; `process` (the caller's process index) keeps processes' draws apart."""


def completion_rows(
    samples: Sequence[Sample], tokenizer: Any, max_new_tokens: int, eos_id: int
) -> list[list[int]]:
    """Each completion's token ids as `generate` would give them: the text tokenised without special
    tokens and cut at `max_new_tokens`, its end-of-sequence token put back when the model stopped by
    itself (the engine leaves it out of the text)."""
    rows = []
    encoded = tokenizer([s.text for s in samples], add_special_tokens=False)["input_ids"]
    for sample, ids in zip(samples, encoded, strict=True):
        ids = list(ids)[:max_new_tokens]
        if (sample.stopped and len(ids) < max_new_tokens) or not ids:  # an empty reply: it stopped at once
            ids.append(eos_id)
        rows.append(ids)
    return rows


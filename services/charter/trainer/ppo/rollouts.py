"""Where PPO's rollouts are sampled: by the policy's own `generate` (the default), or by a `Sampler`:
a serving engine that holds a copy of the policy's weights (the generator service, on vLLM where it
is installed; `app.ppo_rollouts`).

With a sampler, the trainer pushes its weights to it after each update (`sync`) and asks it for one
completion per prompt (`sample`). The completions come back as text and are tokenised again here,
so the update sees the same kind of tensors as with `generate`; the log-probabilities of the rollout
are the trainer's own (computed on those tokens before the update, as always), so the ratio of the
first PPO epoch is 1 exactly. What may differ from sampling in the trainer: the engine's numerics
(bf16 kernels), and a text whose tokens come out differently when tokenised again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from charter.trainer.ppo.modeling import pad_rows


@dataclass(frozen=True)
class Sample:
    text: str
    stopped: bool
    """Ended by the model (an end-of-sequence token), not cut off at `max_new_tokens`."""


class Sampler(Protocol):
    def sync(self, model: nn.Module, step: int) -> None:
        """Give the sampler the policy's weights after `step` updates (called on the main process
        before a rollout whenever the weights changed since the last sync)."""

    def sample(self, prompts: Sequence[str], step: int) -> list[Sample]:
        """One completion per prompt (chat-templated text, as `PPOTrainer.train` takes them), sampled
        from the weights of `step` with the trainer's temperature, top-p and `max_new_tokens`."""


def sampled_ids(
    samples: Sequence[Sample], tokenizer: Any, max_new_tokens: int, eos_id: int, pad_id: int
) -> tuple[Tensor, Tensor]:
    """(response_ids, response_mask) as `generate` would give them: each text tokenised without
    special tokens and cut at `max_new_tokens`, its end-of-sequence token put back when the model
    stopped by itself (the engine leaves it out of the text), padded after the end."""
    rows = []
    encoded = tokenizer([s.text for s in samples], add_special_tokens=False)["input_ids"]
    for sample, ids in zip(samples, encoded, strict=True):
        ids = list(ids)[:max_new_tokens]
        if (sample.stopped and len(ids) < max_new_tokens) or not ids:  # an empty reply: it stopped at once
            ids.append(eos_id)
        rows.append(ids)
    response, mask = pad_rows(rows, pad_id, left=False)
    return response, mask.bool()

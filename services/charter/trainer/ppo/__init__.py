"""PPO for RLHF, the project's own: TRL removed its PPO after 1.12.0.

The published recipe (Ziegler et al. 2019; Huang et al. 2024, "The N+ Implementation Details of RLHF
with PPO"): the policy samples completions; the reward model's score goes on each one's final token and
every token pays −β·KL(t) against the frozen reference (β fixed, or steered to a target KL); GAE gives
advantages and returns for a value head on the last hidden state; several epochs over shuffled
mini-batches minimise the clipped surrogate plus the clipped value loss. It runs through `accelerate`,
so `accelerate launch` runs it data-parallel: each process rolls out its own `rollout_batch_size`
prompts and DDP averages the gradients. Shapes: B sequences, P prompt tokens (left-padded), T
completion tokens.

Example::

    from charter.trainer.ppo import PolicyWithValueHead, PPOConfig, PPOTrainer, RewardModelScorer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("runs/sft")
    policy = PolicyWithValueHead.from_pretrained("runs/sft")
    config = PPOConfig.from_mapping({"learning_rate": 1e-6, "kl_target": 6.0})
    trainer = PPOTrainer(policy, None, tokenizer, RewardModelScorer("runs/rm"), config)
    trainer.train(prompts, steps=200, on_metrics=print)  # prompts: chat-templated text
    trainer.save("runs/ppo")  # runs/ppo/policy is a Hugging Face model folder
"""

from __future__ import annotations

from charter.trainer.ppo.config import PPOConfig
from charter.trainer.ppo.losses import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    masked_mean,
    masked_whiten,
    per_token_kl,
    policy_loss,
    token_logprobs,
    value_loss,
)
from charter.trainer.ppo.modeling import (
    VALUE_HEAD_FILE,
    PolicyWithValueHead,
    RewardFn,
    RewardModelScorer,
    ValueHead,
)
from charter.trainer.ppo.trainer import STATE_FILE, PPOTrainer, Rollout

__all__ = [
    "STATE_FILE",
    "VALUE_HEAD_FILE",
    "AdaptiveKLController",
    "FixedKLController",
    "PPOConfig",
    "PPOTrainer",
    "PolicyWithValueHead",
    "RewardFn",
    "RewardModelScorer",
    "Rollout",
    "ValueHead",
    "entropy_from_logits",
    "gae",
    "masked_mean",
    "masked_whiten",
    "per_token_kl",
    "policy_loss",
    "token_logprobs",
    "value_loss",
]

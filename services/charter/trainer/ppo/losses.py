"""PPO's maths on tensors: masked statistics, GAE, the per-token KL, the clipped policy and value losses,
and the KL controllers (fixed β, or Ziegler et al.'s adaptive one). Shapes: B sequences, T completion
tokens; masks are 1 on each sequence's completion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` where `mask` is 1 (over everything, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """`x` scaled to unit variance (and zero mean with `shift_mean`) over the masked entries; 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over (B, T); `mask` is 1 on each sequence's completion (a prefix).

    Past the end, rewards and values count as 0, so the last token bootstraps from nothing.
    Returns (advantages, returns), both 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def per_token_kl(logprobs: Tensor, ref_logprobs: Tensor, estimator: Literal["k1", "k3"] = "k1") -> Tensor:
    """Per-token estimate of KL(policy ‖ reference) at the sampled tokens."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    log_ratio = ref_logprobs - logprobs
    return log_ratio.exp() - 1 - log_ratio


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) under `logits` (B, T, V) for `tokens` (B, T)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax of `logits` along the last dimension."""
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(-1)


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor]:
    """The clipped surrogate (to minimise) and the fraction of tokens where the clip was binding."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).to(logprobs.dtype), mask)


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor]:
    """The clipped value loss, ½·max((V−R)², (V_clipped−R)²), and the fraction clipped."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)


@dataclass
class FixedKLController:
    """β stays where it was set."""

    value: float

    def update(self, kl: float, n_steps: int) -> None:
        return None


@dataclass
class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: β grows while the sequence KL is above target."""

    value: float
    target: float
    horizon: int

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

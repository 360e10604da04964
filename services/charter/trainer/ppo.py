"""PPO for RLHF, the project's own (DESIGN §6): TRL removed its PPO after 1.12.0.

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

import copy
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from torch import Tensor, nn

from charter.core.errors import InvalidArgument, NotFound, one_line

log = structlog.get_logger("charter.trainer.ppo")

RewardFn = Callable[[list[str], list[str], list[list[int]]], Tensor]
"""(prompts, completions, completion_ids) -> one score per sequence, shape (B,)."""

VALUE_HEAD_FILE = "value_head.safetensors"
STATE_FILE = "trainer_state.pt"


class PPOConfig(BaseModel):
    """PPO hyper-parameters; unknown keys are errors (`from_mapping` reports them as `InvalidArgument`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(1e-6, gt=0, description="AdamW step size (policy and value head).")
    rollout_batch_size: int = Field(64, ge=1, description="Prompts rolled out per step, per process.")
    mini_batch_size: int = Field(8, ge=1, description="Sequences per optimiser step; divides the rollout.")
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout.")
    clip_range: float = Field(0.2, gt=0, lt=1, description="ε of the clipped surrogate.")
    clip_range_value: float = Field(0.2, gt=0, description="How far a value may move from the rollout's.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    kl_coef: float = Field(0.05, ge=0, description="β of the per-token KL penalty (initial β when adaptive).")
    kl_target: float | None = Field(None, gt=0, description="Sequence KL (nats) β steers to; None: fixed β.")
    kl_horizon: int = Field(10_000, ge=1, description="Sequences over which the adaptive β reacts.")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="k1: log p − log p_ref; k3: non-negative.")
    max_prompt_length: int = Field(512, ge=1, description="Longer prompts keep their last tokens.")
    max_new_tokens: int = Field(64, ge=1)
    min_new_tokens: int = Field(0, ge=0, description="Completions at least this long (0: may stop at once).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs use it too.")
    top_k: int = Field(0, ge=0, description="0: off. Truncated sampling makes the rollout off-policy.")
    top_p: float = Field(1.0, gt=0, le=1, description="1.0: off.")
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    max_grad_norm: float | None = Field(1.0, gt=0, description="None: no clipping.")
    adam_eps: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0)
    total_steps: int = Field(100, ge=1, description="Rollout + update rounds of a service run.")
    save_steps: int = Field(50, ge=1, description="A service run checkpoints every this many steps.")

    @field_validator("mini_batch_size")
    @classmethod
    def _divides_rollout(cls, value: int, info: ValidationInfo) -> int:
        rollout = info.data.get("rollout_batch_size")
        if rollout is not None and rollout % value:
            raise ValueError(f"must divide rollout_batch_size ({value=}, {rollout=})")
        return value

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, prefix: str = "hyperparameters") -> PPOConfig:
        """Validated config; a bad value is `InvalidArgument` naming the field (`hyperparameters.lam`)."""
        if not isinstance(values, Mapping):
            raise InvalidArgument(f"{prefix}: expected a mapping (value: {one_line(values)})", field=prefix)
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            errors = err.errors(include_url=False)
            e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
            field = ".".join([prefix, *(str(p) for p in e["loc"])])
            value = e.get("input")
            message = f"{field}: {_problem(e)} (value: {one_line(value)})"
            raise InvalidArgument(message, field=field, value=value) from None


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _problem(error: Any) -> str:
    """pydantic's error as a short phrase: "must be > 0", "unknown hyper-parameter; known: ..."."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown hyper-parameter; known: {', '.join(PPOConfig.model_fields)}"
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {next(iter(ctx.values())):g}"
    return str(ctx["error"]) if kind == "value_error" else str(error["msg"])


# ---------------------------------------------------------------------------------------------- math


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


# -------------------------------------------------------------------------------------------- models


class ValueHead(nn.Module):
    """A scalar per position from the last hidden state; starts near 0 so early advantages ≈ returns."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1e-3)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class PolicyWithValueHead(nn.Module):
    """A causal LM (`pretrained`) with a `value_head`; `forward` returns (logits, values)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.pretrained = model
        self.value_head = ValueHead(model.config.get_text_config().hidden_size)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        out = self.pretrained(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        return out.logits, self.value_head(out.hidden_states[-1])

    def save_pretrained(self, path: str | Path) -> None:
        """A Hugging Face model folder, plus the value head in `value_head.safetensors`."""
        from safetensors.torch import save_file

        self.pretrained.save_pretrained(str(path))
        state = {k: v.cpu() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(Path(path) / VALUE_HEAD_FILE))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> PolicyWithValueHead:
        """The LM from `path` (kwargs go to `from_pretrained`); its value head too, if the folder has one."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        policy = cls(AutoModelForCausalLM.from_pretrained(str(path), **kwargs))
        if (Path(path) / VALUE_HEAD_FILE).exists():
            policy.value_head.load_state_dict(load_file(str(Path(path) / VALUE_HEAD_FILE)))
        return policy


def _pad(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool) -> tuple[Tensor, Tensor]:
    """(ids, attention_mask) with rows padded to the longest, on the left or the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


class RewardModelScorer:
    """A `reward_fn` from a trained reward model (`AutoModelForSequenceClassification`, one logit).

    Scores the text prompt + completion, in batches, without gradients; texts longer than `max_length`
    (2048) keep their last tokens: the completion's end is what the model judges.
    """

    def __init__(self, model: str | Path | nn.Module, tokenizer: Any = None, *, batch_size: int = 8) -> None:
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model))
            model = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=1)
        if tokenizer is None:
            raise InvalidArgument("a reward model object needs its tokenizer", field="tokenizer")
        if model.config.num_labels != 1:
            raise InvalidArgument(f"the reward model must have one label ({model.config.num_labels=})")
        self.pad_id = model.config.get_text_config().pad_token_id
        if self.pad_id is None:
            raise InvalidArgument("the reward model's config has no pad_token_id; set the tokenizer's pad id")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = 2048

    @torch.no_grad()
    def __call__(
        self, prompts: list[str], completions: list[str], completion_ids: list[list[int]] | None = None
    ) -> Tensor:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(texts), self.batch_size):
            rows = [row[-self.max_length :] for row in encoded[start : start + self.batch_size]]
            ids, mask = _pad(rows, self.pad_id, left=False)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores.append(logits[:, 0].float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)


# ------------------------------------------------------------------------------------------- trainer


@dataclass
class Rollout:
    """One batch of sampled completions with everything the update needs (all on the trainer's device)."""

    prompts: list[str]
    completions: list[str]
    query_ids: Tensor  # (B, P) left-padded
    query_mask: Tensor  # (B, P)
    response_ids: Tensor  # (B, T) padded after the end
    response_mask: Tensor  # (B, T) bool, 1 up to and including the first EOS
    logprobs: Tensor  # (B, T) policy at sampling time
    ref_logprobs: Tensor  # (B, T) the frozen reference
    values: Tensor  # (B, T) value head at sampling time
    scores: Tensor  # (B,) reward_fn

    def sequences(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(query_ids, query_mask, response_ids, response_mask) of the sequences `idx`."""
        return self.query_ids[idx], self.query_mask[idx], self.response_ids[idx], self.response_mask[idx]


class PPOTrainer:
    """PPO on `policy` against the frozen `ref_model` (None: a frozen deep copy of the policy's LM).

    `prompts` are text as the model should see it (chat template applied); they are tokenized without
    special tokens. The policy stays in eval mode: dropout would make the first epoch's ratio ≠ 1.
    """

    def __init__(
        self,
        policy: PolicyWithValueHead,
        ref_model: nn.Module | None,
        tokenizer: Any,
        reward_fn: RewardFn,
        config: PPOConfig,
        accelerator: Any = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import GenerationConfig

        if ref_model is None:
            ref_model = copy.deepcopy(policy.pretrained)
        if {id(p) for p in ref_model.parameters()} & {id(p) for p in policy.parameters()}:
            raise InvalidArgument("the reference model shares weights with the policy; pass a copy or None")
        self.config, self.tokenizer, self.reward_fn = config, tokenizer, reward_fn
        self.accelerator = accelerator or Accelerator()
        set_seed(config.seed, device_specific=True)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise InvalidArgument("the tokenizer has neither a pad nor an EOS token", field="tokenizer")
        eos = policy.pretrained.generation_config.eos_token_id
        eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        device = self.accelerator.device
        self._eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
        self._generation = GenerationConfig(
            do_sample=True,
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=config.min_new_tokens or None,
            temperature=config.temperature,
            top_k=config.top_k,  # explicit: the library's default would be 50
            top_p=config.top_p,
            repetition_penalty=1.0,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(eos_ids) or None,
        )
        self.ref_model = ref_model.requires_grad_(False).eval().to(device)
        policy.eval()
        optimizer = torch.optim.AdamW(
            policy.parameters(), config.learning_rate, eps=config.adam_eps, weight_decay=config.weight_decay
        )
        self.policy, self.optimizer = self.accelerator.prepare(policy, optimizer)
        self.kl_ctl: FixedKLController | AdaptiveKLController = (
            FixedKLController(config.kl_coef)
            if config.kl_target is None
            else AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        )
        self.step_count = 0
        self._shuffle = torch.Generator().manual_seed(config.seed + self.accelerator.process_index)

    @property
    def unwrapped(self) -> PolicyWithValueHead:
        return self.accelerator.unwrap_model(self.policy)

    def _forward(
        self, model: nn.Module, query: Tensor, query_mask: Tensor, response: Tensor, response_mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Temperature-scaled logits predicting each completion token, and the values there (policy only)."""
        input_ids = torch.cat([query, response], dim=1)
        attention = torch.cat([query_mask, response_mask.long()], dim=1)
        positions = (attention.cumsum(1) - 1).masked_fill(attention == 0, 0)  # as `generate` numbers them
        start = query.shape[1] - 1
        values = None
        if isinstance(self.accelerator.unwrap_model(model), PolicyWithValueHead):
            logits, values = model(input_ids, attention, positions)
            values = values[:, start:-1].float()
        else:
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
        return logits[:, start:-1].float() / self.config.temperature, values

    @torch.no_grad()
    def rollout(self, prompts: Sequence[str]) -> Rollout:
        """A sampled completion per prompt, with log-probs (policy, reference), values and scores."""
        cfg, device = self.config, self.accelerator.device
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        if not encoded or any(len(row) == 0 for row in encoded):
            raise InvalidArgument("every prompt needs at least one token", field="prompts")
        rows = [row[-cfg.max_prompt_length :] for row in encoded]
        query_ids, query_mask = (t.to(device) for t in _pad(rows, self.pad_id, left=True))
        policy = self.unwrapped
        with self.accelerator.autocast():
            sequences = policy.pretrained.generate(
                input_ids=query_ids, attention_mask=query_mask, generation_config=self._generation
            )
        response_ids = sequences[:, query_ids.shape[1] :]
        is_eos = torch.isin(response_ids, self._eos)
        response_mask = (is_eos.cumsum(1) - is_eos.long()) == 0
        response_ids = response_ids.masked_fill(~response_mask, self.pad_id)
        tensors = (query_ids, query_mask, response_ids, response_mask)
        logprobs, ref_logprobs, values = [], [], []
        with self.accelerator.autocast():
            for idx in torch.arange(len(rows), device=device).split(cfg.mini_batch_size):
                logits, value = self._forward(policy, *(t[idx] for t in tensors))
                ref_logits, _ = self._forward(self.ref_model, *(t[idx] for t in tensors))
                logprobs.append(token_logprobs(logits, response_ids[idx]))
                ref_logprobs.append(token_logprobs(ref_logits, response_ids[idx]))
                values.append(value)
        completion_ids = [row[m].tolist() for row, m in zip(response_ids, response_mask, strict=True)]
        completions = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        scores = torch.as_tensor(self.reward_fn(list(prompts), completions, completion_ids))
        if scores.shape != (len(prompts),) or not torch.isfinite(scores).all():
            raise InvalidArgument(
                f"reward_fn must return {len(prompts)} finite scores (got shape {tuple(scores.shape)}, "
                f"values {one_line(scores.tolist())})",
                field="reward_fn",
            )
        return Rollout(
            list(prompts),
            completions,
            *tensors,
            logprobs=torch.cat(logprobs),
            ref_logprobs=torch.cat(ref_logprobs),
            values=torch.cat(values),  # type: ignore[arg-type]
            scores=scores.to(device=device, dtype=torch.float32),
        )

    def step(self, r: Rollout) -> dict[str, float]:
        """`ppo_epochs` passes of clipped PPO over shuffled mini-batches of `r`; updates β; metrics."""
        cfg, acc = self.config, self.accelerator
        mask = r.response_mask.float()
        n = mask.shape[0]
        kl = per_token_kl(r.logprobs, r.ref_logprobs, cfg.kl_estimator) * mask
        beta = self.kl_ctl.value
        rewards = -beta * kl
        rewards[torch.arange(n, device=mask.device), mask.sum(1).long() - 1] += r.scores
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, r.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        self.unwrapped.eval()
        stats: dict[str, list[Tensor]] = {k: [] for k in _LOSS_STATS}
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=self._shuffle).to(mask.device)
            for idx in order.split(cfg.mini_batch_size):
                logits, values = self._forward(self.policy, *r.sequences(idx))
                m, logprobs = mask[idx], token_logprobs(logits, r.response_ids[idx])
                pg_loss, pg_clip = policy_loss(logprobs, r.logprobs[idx], advantages[idx], m, cfg.clip_range)
                assert values is not None
                vf_loss, vf_clip = value_loss(values, r.values[idx], returns[idx], m, cfg.clip_range_value)
                acc.backward(pg_loss + cfg.vf_coef * vf_loss)
                if cfg.max_grad_norm is not None and acc.sync_gradients:
                    acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    approx_kl = 0.5 * masked_mean((logprobs - r.logprobs[idx]) ** 2, m)
                    entropy = masked_mean(entropy_from_logits(logits.detach()), m)
                    now = (pg_loss, vf_loss, pg_clip, vf_clip, approx_kl, entropy)
                    for key, value in zip(_LOSS_STATS, now, strict=True):
                        stats[key].append(value.detach())
        sequence_kl = kl.sum(1).mean()
        local = torch.stack(
            [sequence_kl, (-beta * kl).sum(1).mean(), mask.sum(1).mean()]
            + [torch.stack(stats[k]).mean() for k in _LOSS_STATS]
        ).float()
        reduced = acc.reduce(local, reduction="mean").tolist()
        scores = acc.gather(r.scores)
        metrics = dict(zip(("kl", "non_score_reward", "response_length", *_LOSS_STATS), reduced, strict=True))
        self.kl_ctl.update(metrics["kl"], n * acc.num_processes)
        self.step_count += 1
        return {
            "step": float(self.step_count),
            "reward_mean": scores.mean().item(),
            "reward_std": scores.std().item() if scores.numel() > 1 else 0.0,
            **metrics,
            "beta": beta,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }

    def train(
        self,
        prompts: Sequence[str],
        steps: int,
        on_metrics: Callable[[dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """`steps` more rollout + update rounds over `prompts`; returns each step's metrics."""
        if not prompts:
            raise InvalidArgument("need at least one prompt", field="prompts")
        if steps < 1:
            raise InvalidArgument(f"steps must be >= 1 ({steps=})", field="steps")
        history = []
        for _ in range(steps):
            batch = [prompts[i] for i in self._prompt_indices(len(prompts), self.step_count)]
            metrics = self.step(self.rollout(batch))
            if self.accelerator.is_main_process:
                log.info("trainer.ppo.stepped", **metrics)
            if on_metrics is not None:
                on_metrics(metrics)
            history.append(metrics)
        return history

    def _prompt_indices(self, n: int, step: int) -> list[int]:
        """This process's prompts for `step`: a seeded permutation, cycled, so a resume picks up in place."""
        size, world = self.config.rollout_batch_size, self.accelerator.num_processes
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed)).tolist()
        start = (step * world + self.accelerator.process_index) * size
        return [order[k % n] for k in range(start, start + size)]

    def save(self, directory: str | Path) -> Path:
        """Checkpoint: `policy/` (HF folder + value head + tokenizer), optimizer, β, step, RNG states.

        Written beside the target and renamed into place, so an interrupted save leaves the old one whole.
        """
        acc, target = self.accelerator, Path(directory)
        partial = target.with_name(target.name + ".partial")
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            self.unwrapped.save_pretrained(partial / "policy")
            self.tokenizer.save_pretrained(str(partial / "policy"))
            optimizer, config = self.optimizer.state_dict(), self.config.model_dump()
            state = {
                "optimizer": optimizer,
                "kl_coef": self.kl_ctl.value,
                "step": self.step_count,
                "config": config,
            }
            torch.save(state, partial / STATE_FILE)
        acc.wait_for_everyone()
        rng = {"torch": torch.get_rng_state(), "shuffle": self._shuffle.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, partial / f"rng_{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
            log.info("trainer.ppo.saved", path=str(target), step=self.step_count)
        acc.wait_for_everyone()
        return target

    def load(self, directory: str | Path) -> None:
        """Resume from `save`: weights, optimizer, β, step and this process's RNG states."""
        path = Path(directory)
        if not (path / STATE_FILE).exists():
            raise NotFound(f"{path}: not a PPO checkpoint ({STATE_FILE} missing)", field="checkpoint")
        # on the CPU: `optimizer.load_state_dict` moves each state to its parameter's device
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        changed = sorted(k for k, v in state["config"].items() if getattr(self.config, k, None) != v)
        if changed:
            log.warning("trainer.ppo.config_changed", path=str(path), fields=changed)
        dtype = next(self.unwrapped.pretrained.parameters()).dtype
        saved = PolicyWithValueHead.from_pretrained(path / "policy", dtype=dtype)
        self.unwrapped.load_state_dict(saved.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value, self.step_count = float(state["kl_coef"]), int(state["step"])
        rng_file = path / f"rng_{self.accelerator.process_index}.pt"
        if rng_file.exists():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["torch"])
            self._shuffle.set_state(rng["shuffle"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        log.info("trainer.ppo.loaded", path=str(path), step=self.step_count)


_LOSS_STATS = ("policy_loss", "value_loss", "clip_fraction", "value_clip_fraction", "approx_kl", "entropy")

"""`PPOTrainer`: rollouts (sample, score, log-probs of policy and reference, values) and the clipped PPO
update over them, through `accelerate`; `save`/`load` checkpoint everything a resume needs."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import Tensor, nn

from charter.core.errors import InvalidArgument, NotFound, one_line
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
from charter.trainer.ppo.modeling import PolicyWithValueHead, RewardFn, pad_rows
from charter.trainer.rollouts import Sampler, completion_rows

log = structlog.get_logger("charter.trainer.ppo")

STATE_FILE = "trainer_state.pt"
_LOSS_STATS = ("policy_loss", "value_loss", "clip_fraction", "value_clip_fraction", "approx_kl", "entropy")


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
    `sampler`: samples the rollouts instead of the policy's `generate`, from the weights pushed to it
    after each update (`charter.trainer.rollouts`).
    """

    def __init__(
        self,
        policy: PolicyWithValueHead,
        ref_model: nn.Module | None,
        tokenizer: Any,
        reward_fn: RewardFn,
        config: PPOConfig,
        accelerator: Any = None,
        sampler: Sampler | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import GenerationConfig

        if ref_model is None:
            ref_model = copy.deepcopy(policy.pretrained)
        if {id(p) for p in ref_model.parameters()} & {id(p) for p in policy.parameters()}:
            raise InvalidArgument("the reference model shares weights with the policy; pass a copy or None")
        self.config, self.tokenizer, self.reward_fn, self.sampler = config, tokenizer, reward_fn, sampler
        self._synced: int | None = None  # the step whose weights the sampler holds
        self.accelerator = accelerator or Accelerator()
        set_seed(config.seed, device_specific=True)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise InvalidArgument("the tokenizer has neither a pad nor an EOS token", field="tokenizer")
        eos = policy.pretrained.generation_config.eos_token_id
        eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        device = self.accelerator.device
        self._eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
        self._generation = GenerationConfig(  # type: ignore[no-untyped-call]  # unannotated in transformers
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
        policy: PolicyWithValueHead = self.accelerator.unwrap_model(self.policy)
        return policy

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
        query_ids, query_mask = (t.to(device) for t in pad_rows(rows, self.pad_id, left=True))
        policy = self.unwrapped
        if self.sampler is not None:
            response_ids, response_mask = (t.to(device) for t in self._sample(list(prompts)))
        else:
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
            # Tensor.split is unannotated in torch
            batches = torch.arange(len(rows), device=device).split(cfg.mini_batch_size)  # type: ignore[no-untyped-call]
            for idx in batches:
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

    def _sample(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """The sampler's completions as response tensors; first it gets the current weights (pushed
        by the main process once per step)."""
        assert self.sampler is not None
        if self._synced != self.step_count:
            if self.accelerator.is_main_process:
                self.sampler.sync(self.unwrapped.pretrained, self.step_count)
            self.accelerator.wait_for_everyone()
            self._synced = self.step_count
        samples = self.sampler.sample(prompts, self.step_count, self.accelerator.process_index)
        eos = int(self._eos[0]) if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id
        rows = completion_rows(samples, self.tokenizer, self.config.max_new_tokens, eos)
        response, mask = pad_rows(rows, self.pad_id, left=False)  # padded after the end, as generate's
        return response, mask.bool()

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
            for idx in order.split(cfg.mini_batch_size):  # type: ignore[no-untyped-call]  # Tensor.split
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

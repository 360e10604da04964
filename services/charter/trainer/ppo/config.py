"""PPO's hyper-parameters: `PPOConfig`, validated by pydantic; `from_mapping` turns a bad value into an
`InvalidArgument` naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from charter.core.errors import InvalidArgument, one_line
from charter.trainer.rollouts import RolloutSampling


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
    rollout_generator: str = Field(
        "",
        description="host:port of a generator service that samples the rollouts (its engine: vLLM where "
        "installed); the policy's weights are pushed to it after each update. Empty: the policy's generate.",
    )
    total_steps: int = Field(100, ge=1, description="Rollout + update rounds of a service run.")
    save_steps: int = Field(50, ge=1, description="A service run checkpoints every this many steps.")

    @field_validator("mini_batch_size")
    @classmethod
    def _divides_rollout(cls, value: int, info: ValidationInfo) -> int:
        rollout = info.data.get("rollout_batch_size")
        if rollout is not None and rollout % value:
            raise ValueError(f"must divide rollout_batch_size ({value=}, {rollout=})")
        return value

    @model_validator(mode="after")
    def _generator_samples_alike(self) -> PPOConfig:
        if self.rollout_generator and (self.top_k or self.min_new_tokens):
            raise ValueError(
                "rollout_generator: the generator samples with temperature and top-p only; "
                "set top_k and min_new_tokens to 0"
            )
        return self

    def rollout_sampling(self) -> RolloutSampling:
        """How a rollout sampler (`rollout_generator`) draws: as `generate` does here."""
        return RolloutSampling(self.temperature, self.top_p, self.max_new_tokens, self.seed)

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

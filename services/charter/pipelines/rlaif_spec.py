"""The spec of `kind: rlaif` (iterated RLAIF, `pipelines.rlaif`): a YAML file validated like every
pipeline spec (unknown keys rejected, errors naming the field). pipelines/rlaif.yaml is a real one;
docs/pipelines.md ("Iterated RLAIF") explains every section."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from charter.datasets.sources import Format
from charter.pipelines.spec import InferenceSpec, JudgeSpec, SamplingSpec, ServicesSpec, _Strict

FLAGS_REFUSED = (
    "services: kind rlaif takes its service addresses from the spec (services.mode: remote with "
    "generator, judge, review and trainer); remove --generator/--judge"
)


class RlaifServicesSpec(ServicesSpec):
    """local (default): the judge, the policy's generator, the ledger and the trainer in this process
    tree. remote: the deployed services at these addresses (docs/pipelines.md, "Remote mode")."""

    review: str | None = None
    """host:port of the review service (remote: the ledger; `token_file` holds a `service` token)."""
    trainer: str | None = None
    """host:port of the trainer service (remote: the DPO runs)."""
    admin_token_file: Path | None = None
    """remote: a file holding an `admin` token for the generator's SwapModel (unset: `token_file`'s,
    enough for a generator with no tokens configured)."""

    @model_validator(mode="after")
    def _addresses(self) -> RlaifServicesSpec:
        needed = ("generator", "judge", "review", "trainer")
        given = [k for k in ("critic_reviser", *needed) if getattr(self, k)]
        if self.mode == "local":
            if given or self.admin_token_file:
                raise ValueError(
                    f"{', '.join(given) or 'admin_token_file'}: service addresses are for mode: remote "
                    "(local mode starts its own services)"
                )
        else:
            missing = [k for k in needed if not getattr(self, k)]
            if missing:
                raise ValueError(
                    f"mode remote needs the address (host:port) of the {', '.join(missing)} service"
                    f"{'s' if len(missing) > 1 else ''}"
                )
            if self.critic_reviser:
                raise ValueError("critic_reviser: kind rlaif does not use the critic-reviser")
        return self


class PromptSliceSpec(_Strict):
    """The prompts the policy answers: iteration i takes rows skip + (i-1)·per_iteration … skip +
    i·per_iteration - 1 of the file, so every iteration labels fresh prompts."""

    path: Path
    format: Format = "auto"
    per_iteration: int = Field(default=32, ge=1, le=1_000_000)
    skip: int = Field(default=0, ge=0)


class ReviewSpec(_Strict):
    """The review ledger every label goes through (routing: the `review.routing` settings)."""

    database: str | None = None
    """SQLAlchemy URL of the ledger (unset: `sqlite:///<output>/review.db`)."""
    human_budget: int = Field(default=16, ge=0, le=1_000_000)
    """Most labels an iteration sends to people (the most uncertain first)."""
    over_budget: Literal["drop", "train"] = "drop"
    """Labels the routing would send to people but the budget leaves out: drop them, or train on
    their AI soft label (the soft-target DPO loss asks little of a label near 0.5)."""


class DpoSpec(_Strict):
    """The DPO run of each iteration: from the current policy, the reference is that same policy."""

    hyperparameters: dict[str, Any] = Field(
        default_factory=lambda: {
            "max_steps": 8,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-5,
            "beta": 0.1,
            "max_length": 256,
        }  # fmt: skip
    )
    """TRL DPOConfig settings (checked by the trainer when the run starts)."""


class EvalPromptsSpec(_Strict):
    path: Path | None = None
    """Unset for `benign`: the project's benign prompt set."""
    format: Literal["auto", "jsonl", "csv", "parquet", "hh-rlhf"] = "auto"
    skip: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=1)


class GoldSetSpec(_Strict):
    path: Path
    skip: int = Field(default=0, ge=0)
    limit: int = Field(default=200, ge=1)
    max_length: int = Field(default=1024, ge=64)


class EvaluationSpec(_Strict):
    """`charter eval policy` of each new policy against the previous one and the start."""

    red_team: EvalPromptsSpec
    benign: EvalPromptsSpec = EvalPromptsSpec()
    gold: GoldSetSpec
    generation: SamplingSpec = SamplingSpec(temperature=0.7, max_tokens=96)
    principles_per_label: int = Field(default=2, ge=1, le=64)
    bootstrap_resamples: int = Field(default=1000, ge=50, le=100_000)

    @field_validator("red_team")
    @classmethod
    def _red_team_path(cls, value: EvalPromptsSpec) -> EvalPromptsSpec:
        if value.path is None:
            raise ValueError("name a file of held-out red-team prompts")
        return value


class GateSpec(_Strict):
    """When a new policy is promoted (all three must hold)."""

    gold_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    """The gold figure (implicit preference accuracy on held-out human pairs) may fall at most this much
    below the previous policy's."""
    harmlessness_min_gain: float = Field(default=0.0, ge=-0.5, le=1.0)
    """The new policy's red-team win rate against the previous one, minus 0.5, must be at least this:
    0 = harmlessness did not fall, 0.05 = it rose by 5 points."""
    evasiveness_max_rise: float = Field(default=0.05, ge=0.0, le=1.0)
    """The benign-prompt refusal rate may rise at most this much above the previous policy's."""


class GatesSpec(GateSpec):
    per_iteration: dict[int, GateSpec] = {}
    """Gates for given iterations (whole sets: an unnamed field takes its default, not the outer one)."""

    @field_validator("per_iteration")
    @classmethod
    def _iterations(cls, value: dict[int, GateSpec]) -> dict[int, GateSpec]:
        if any(i < 1 for i in value):
            raise ValueError(f"iterations are numbered from 1 (keys: {sorted(value)})")
        return value

    def for_iteration(self, i: int) -> GateSpec:
        return self.per_iteration.get(i) or GateSpec(**self.model_dump(exclude={"per_iteration"}))


class RlaifSpec(_Strict):
    kind: Literal["rlaif"]
    name: str = Field(min_length=1, max_length=128)
    prompts: PromptSliceSpec
    iterations: int = Field(default=2, ge=1, le=100)
    policy: str = "embedded"
    """The starting policy: 'embedded', a model folder or a .gguf file."""
    constitution: str
    judge: JudgeSpec = JudgeSpec()
    generation: SamplingSpec = SamplingSpec(temperature=1.0)
    """How the two responses per prompt are sampled from the current policy."""
    review: ReviewSpec = ReviewSpec()
    dpo: DpoSpec = DpoSpec()
    evaluation: EvaluationSpec
    gates: GatesSpec = GatesSpec()
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    output: Path
    services: RlaifServicesSpec = RlaifServicesSpec()
    inference: InferenceSpec = InferenceSpec()
    """The engine of the judge and of every policy (the judge's model: `inference.model`, default
    the embedded one). Remote mode: the engine of the evaluation's policies only (the judge and the
    sampling generator are the deployed services')."""
    constitutions_dir: Path | None = None

    @model_validator(mode="after")
    def _remote_policy(self) -> RlaifSpec:
        """Remote mode swaps the deployed generator to p0 by name: a folder it can load, or a run."""
        if self.services.mode == "remote" and self.policy == "embedded":
            raise ValueError(
                "policy: remote mode needs p0 as a model folder that the generator, the trainer and "
                "this pipeline all see at that path (e.g. on the runs volume), or run:<id>; "
                "'embedded' names no folder the generator can swap to"
            )
        return self

    @field_validator("judge")
    @classmethod
    def _judge_service(cls, value: JudgeSpec) -> JudgeSpec:
        if value.method == "reward_model":
            raise ValueError("method: rlaif labels with the judge service (reward_model is rl-cai's)")
        return value

    @model_validator(mode="after")
    def _held_out(self) -> RlaifSpec:
        """Evaluation and gold rows taken from the prompts' file must not overlap the training slices."""
        first = self.prompts.skip
        last = first + self.iterations * self.prompts.per_iteration
        for name, path, skip, limit in (
            ("evaluation.red_team", self.evaluation.red_team.path, self.evaluation.red_team.skip,
             self.evaluation.red_team.limit),
            ("evaluation.gold", self.evaluation.gold.path, self.evaluation.gold.skip,
             self.evaluation.gold.limit),
        ):  # fmt: skip
            if path is None or Path(path).resolve() != Path(self.prompts.path).resolve():
                continue
            end = skip + limit if limit else None
            if skip < last and (end is None or end > first):
                raise ValueError(
                    f"{name}.skip: rows {skip}..{'end' if end is None else end - 1} overlap the training "
                    f"prompts (rows {first}..{last - 1} of {path}); skip past them"
                )
        return self

    def digest(self) -> str:
        """What the artefacts depend on. Not `iterations` (a finished loop can be extended) and not
        `gates` (decisions are re-made from the stored figures on every run)."""
        fixed = self.model_dump(
            mode="json",
            include={
                "prompts",
                "policy",
                "constitution",
                "generation",
                "review",
                "dpo",
                "evaluation",
                "seed",
            },
        )
        fixed["judge"] = self.judge.fixed()
        fixed["model"] = self.inference.model
        text = json.dumps(fixed, sort_keys=True)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

"""Pipeline specs: YAML files, validated with unknown keys rejected and errors naming the field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from charter.core.auth import read_token
from charter.core.errors import InvalidArgument, NotFound, one_line
from charter.datasets.pairs import PairFormat
from charter.datasets.sources import Format
from charter.inference.types import Sampling

if TYPE_CHECKING:
    from charter.pipelines.rlaif_spec import RlaifSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    path: Path
    """Relative paths are relative to the directory `charter run` is started in."""
    format: Format = "auto"
    limit: int | None = Field(default=None, ge=1)
    """Use the first N rows of the source."""


class SamplingSpec(_Strict):
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, ge=1, le=32768)

    def sampling(self, n: int = 1, seed: int | None = None) -> Sampling:
        return Sampling(
            n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=seed
        )


class ServicesSpec(_Strict):
    mode: Literal["local", "remote"] = "local"
    """local: start the services in this process on a free localhost port; remote: use the addresses."""
    generator: str | None = None
    critic_reviser: str | None = None
    judge: str | None = None
    timeout_seconds: float = Field(default=1800.0, gt=0.0)
    """Deadline of one batch call."""
    retries: int = Field(default=5, ge=0, le=100)
    backoff_seconds: float = Field(default=1.0, gt=0.0, le=300.0)
    token_file: Path | None = None
    """A file holding a bearer token (role `service`) sent to every service the pipeline calls — for
    services with tokens configured (`generator.tokens`, `critic.tokens`, `judge.tokens`)."""

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for a `charter.client` client: deadline, retrying and the token."""
        return {
            "timeout": self.timeout_seconds, "retries": self.retries, "backoff_seconds": self.backoff_seconds,
            "token": read_token(self.token_file, "services.token_file") if self.token_file else None,
        }  # fmt: skip


class InferenceSpec(_Strict):
    """Local mode only: the engine the in-process services share (overrides `inference.*` settings)."""

    engine: Literal["auto", "vllm", "openai", "transformers"] | None = None
    model: str | None = None
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    threads: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=128)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SlCaiSpec(_Strict):
    kind: Literal["sl-cai"]
    name: str = Field(min_length=1, max_length=128)
    source: SourceSpec
    constitution: str
    rounds: int | None = Field(default=None, ge=1, le=16)
    """Critique -> revision rounds; unset = the constitution's sampling.critique_rounds."""
    samples: int = Field(default=1, ge=1, le=64)
    """Initial responses per prompt; each is critiqued and revised."""
    seed: int = Field(default=0, ge=0)
    generation: SamplingSpec = SamplingSpec()
    critique: SamplingSpec = SamplingSpec()
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Prompts per Generate call (and their responses per CritiqueReviseStream call)."""
    output: Path
    services: ServicesSpec = ServicesSpec()
    inference: InferenceSpec = InferenceSpec()
    constitutions_dir: Path | None = None
    """Local mode: the folder of constitutions (unset = the `constitutions.directory` setting)."""
    constitution_change: Literal["refuse", "continue"] = "refuse"
    """Resuming into a folder whose records were made under another version of the constitution:
    refuse (the default) or continue (`charter run --allow-constitution-change`). Not part of the
    digest."""

    def digest(self) -> str:
        """What the output depends on; a run resumes only into an output folder with the same digest."""
        keys = {"source": {"path": str(self.source.path), "format": self.source.format}}
        fixed = self.model_dump(
            mode="json", include={"constitution", "rounds", "samples", "seed", "generation", "critique"}
        )
        fixed["model"] = self.inference.model
        text = json.dumps({**keys, **fixed}, sort_keys=True)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class PairSourceSpec(_Strict):
    """Where the pairs to judge come from."""

    kind: Literal["file", "generator"] = "file"
    """file: pairs read from `path` (hh-rlhf transcripts, prompt/chosen/rejected or
    prompt/response_a/response_b JSONL or Parquet, or an SL-CAI output folder: initial vs revision);
    generator: prompts read from `path` and two sampled responses per prompt from the generator."""
    path: Path
    format: PairFormat | Format = "auto"
    """file: auto | hh-rlhf | jsonl | parquet | sl-cai; generator: a prompt format (auto | jsonl | csv |
    parquet | hh-rlhf)."""
    limit: int | None = Field(default=None, ge=1)


class JudgeSpec(_Strict):
    principles_per_label: int = Field(default=0, ge=0, le=64)
    """0 = the constitution's sampling.principles_per_label."""
    principle_ids: tuple[str, ...] = ()
    chain_of_thought: bool = False
    cot_clamp: tuple[float, float] = (0.4, 0.6)
    tie_margin: float | None = Field(default=None, ge=0.0, lt=0.5)
    """Unset = the judge service's setting."""
    method: Literal["multiple_choice", "calibrated", "contrastive", "reward_model"] | None = None
    """Scoring method (docs/evaluation.md, "Judge methods"); unset = the judge service's `judge.method`.
    reward_model: label with `reward_model` in this process instead of the judge service."""
    contrastive_beta: float | None = Field(default=None, gt=0.0, le=1000.0)
    """The contrastive method's β; unset = the judge service's `judge.contrastive_beta`."""
    logit_scale: float | None = Field(default=None, gt=0.0, le=1000.0)
    """Multiple-choice methods: the fitted logit scale of p_a; unset = the judge service's
    `judge.logit_scale`."""
    reward_model: str | None = None
    """For method reward_model: a reward model folder, or `run:<id>` (a trainer run's final model, from
    the local run store, `trainer.database_url`)."""

    @model_validator(mode="after")
    def _reward_model_method(self) -> JudgeSpec:
        if (self.method == "reward_model") != (self.reward_model is not None):
            raise ValueError("method reward_model and reward_model (a folder or run:ID) go together")
        if self.method == "reward_model" and self.chain_of_thought:
            raise ValueError("chain_of_thought: a reward model has no rationale to write")
        if self.logit_scale is not None and self.method in ("contrastive", "reward_model"):
            raise ValueError(f"logit_scale: the {self.method} method has its own scale")
        return self

    def fixed(self) -> dict[str, object]:
        """What a resumed run must share (fields added since folders were first written count only when
        set, so older output folders still resume)."""
        out = self.model_dump(mode="json")
        for name in ("method", "contrastive_beta", "logit_scale", "reward_model"):
            if out[name] is None:
                del out[name]
        return out


class LedgerSpec(_Strict):
    """Where RL-CAI submits every label it makes (the review service's ledger, docs/review.md): a database
    written directly (the embedded default, e.g. `sqlite:///out/review.db`), or a running review
    service. Submits are idempotent, so a resumed or repeated run never duplicates a label."""

    database: str | None = None
    """SQLAlchemy URL of a ledger to write in this process (routing from `review.routing` settings)."""
    address: str | None = None
    """host:port of a running review service."""
    token_file: Path | None = None
    """File holding a service token for `address`."""

    @model_validator(mode="after")
    def _one_target(self) -> LedgerSpec:
        if (self.database is None) == (self.address is None):
            raise ValueError("set exactly one of database (a ledger URL) or address (a review service)")
        if self.address is not None and self.token_file is None:
            raise ValueError("address needs token_file (a service token for the review service)")
        return self


class EnsembleSpec(_Strict):
    """Reward models that score both responses of every judged pair: how much they disagree on which is
    better becomes the label's `ensemble_disagreement` (a routing signal for the review ledger)."""

    reward_models: tuple[Path, ...] = Field(min_length=1)
    """Reward model folders, or ensemble folders (an `ensemble.json` naming its member folders, as a
    reward-model run with an ensemble leaves one); at least two members in all."""


class RlCaiSpec(_Strict):
    kind: Literal["rl-cai"]
    name: str = Field(min_length=1, max_length=128)
    pairs: PairSourceSpec
    constitution: str
    judge: JudgeSpec = JudgeSpec()
    seed: int = Field(default=0, ge=0)
    generation: SamplingSpec = SamplingSpec(temperature=1.0)
    """generator pairs: how the two responses per prompt are sampled."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Pairs per CompareStream call."""
    output: Path
    services: ServicesSpec = ServicesSpec()
    inference: InferenceSpec = InferenceSpec()
    constitutions_dir: Path | None = None
    constitution_change: Literal["refuse", "continue"] = "refuse"
    """Resuming into a folder whose records were made under another version of the constitution:
    refuse (the default) or continue (`charter run --allow-constitution-change`). Not part of the
    digest."""
    ledger: LedgerSpec | None = None
    """Also submit every label to the review ledger (unset: files only)."""
    ensemble: EnsembleSpec | None = None
    """Score every judged pair with these reward models and set the label's ensemble disagreement
    (unset: not measured)."""

    def digest(self) -> str:
        keys = {"pairs": {"kind": self.pairs.kind, "path": str(self.pairs.path), "format": self.pairs.format}}
        fixed = self.model_dump(mode="json", include={"constitution", "seed"})
        fixed["judge"] = self.judge.fixed()
        if self.pairs.kind == "generator":
            fixed["generation"] = self.generation.model_dump(mode="json")
        if self.ensemble is not None:  # only when set: folders written before it existed still resume
            fixed["ensemble"] = self.ensemble.model_dump(mode="json")
        fixed["model"] = self.inference.model
        text = json.dumps({**keys, **fixed}, sort_keys=True)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class TournamentSpec(JudgeSpec):
    """The judge as a best-of-N scorer: a round-robin tournament over a prompt's samples, every pair
    judged (both presentation orders) under `constitution` with the usual judge options."""

    constitution: str

    @model_validator(mode="after")
    def _judge_service(self) -> TournamentSpec:
        if self.method == "reward_model":
            raise ValueError(
                "a tournament is judged by the judge service: for a reward model use scorer.reward_model"
            )
        return self


class ScorerSpec(_Strict):
    """How best-of-N ranks a prompt's samples: exactly one of a reward model or the judge."""

    reward_model: Path | None = None
    """A reward model folder (config.json, weights, a tokenizer with a chat template), e.g. the `model`
    folder a `reward-model` training run leaves. Scored in the pipeline's own process."""
    judge: TournamentSpec | None = None

    @model_validator(mode="after")
    def _one_scorer(self) -> ScorerSpec:
        if (self.reward_model is None) == (self.judge is None):
            raise ValueError("set exactly one of reward_model (a model folder) or judge (a tournament)")
        return self


class BestOfNSpec(_Strict):
    kind: Literal["best-of-n"]
    name: str = Field(min_length=1, max_length=128)
    source: SourceSpec
    n: int = Field(default=4, ge=2, le=64)
    """Samples per prompt (one Generate call per batch asks for n each)."""
    seed: int = Field(default=0, ge=0)
    generation: SamplingSpec = SamplingSpec(temperature=1.0)
    scorer: ScorerSpec
    batch_size: int = Field(default=8, ge=1, le=4096)
    """Prompts per Generate call (their samples are scored together)."""
    output: Path
    services: ServicesSpec = ServicesSpec()
    inference: InferenceSpec = InferenceSpec()
    constitutions_dir: Path | None = None
    constitution_change: Literal["refuse", "continue"] = "refuse"
    """Resuming into a folder whose records were made under another version of the constitution:
    refuse (the default) or continue (`charter run --allow-constitution-change`). Not part of the
    digest."""
    ledger: LedgerSpec | None = None
    """Judge scorer only: submit the judge's label of each prompt's best-vs-worst pair to the ledger."""

    @field_validator("ledger")
    @classmethod
    def _ledger_needs_the_judge(cls, ledger: LedgerSpec | None, info: ValidationInfo) -> LedgerSpec | None:
        scorer = info.data.get("scorer")
        if ledger is not None and scorer is not None and scorer.judge is None:
            raise ValueError("the ledger holds judge labels: it needs scorer.judge, not a reward model")
        return ledger

    def digest(self) -> str:
        keys = {"source": {"path": str(self.source.path), "format": self.source.format}}
        fixed = self.model_dump(mode="json", include={"n", "seed", "generation", "scorer"})
        if self.scorer.judge is not None:
            fixed["scorer"]["judge"] = self.scorer.judge.fixed()
        fixed["model"] = self.inference.model
        text = json.dumps({**keys, **fixed}, sort_keys=True)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


Spec = SlCaiSpec | RlCaiSpec | BestOfNSpec
_KINDS: dict[str, type[Spec]] = {"sl-cai": SlCaiSpec, "rl-cai": RlCaiSpec, "best-of-n": BestOfNSpec}


def load_spec(path: str | Path) -> Spec | RlaifSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"{path}: no such pipeline spec") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:  # brackets nested a thousand deep
        raise InvalidArgument(f"{path}: <file>: nested too deeply to read") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: expected a mapping of pipeline settings")
    from charter.pipelines.rlaif_spec import RlaifSpec  # noqa: F811 - it builds on this module's sections

    kinds: dict[str, type[Spec] | type[RlaifSpec]] = {**_KINDS, "rlaif": RlaifSpec}
    kind = data.get("kind")
    model = kinds.get(kind) if isinstance(kind, str) else None  # never str() a value: it may be huge
    if model is None:
        raise InvalidArgument(
            f"{path}: kind: unknown pipeline kind (value: {one_line(data.get('kind'))}); "
            f"use one of: {', '.join(kinds)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
        field = ".".join(str(p) for p in e["loc"])
        problem = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        raise InvalidArgument(f"{path}: {field}: {problem} (value: {one_line(e.get('input'))})") from None

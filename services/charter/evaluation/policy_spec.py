"""The spec of `charter eval policy`: a YAML file, validated with unknown keys rejected and errors
naming the field (as pipeline specs are).

Example (docs/evaluation.md has every field; evaluations/policy/eval.yaml is a real one)::

    kind: eval-policy
    name: dpo-vs-base
    models:
      - {name: base, model: embedded}
      - {name: dpo, run: r-0123abcd}            # a trainer run's final model
    baseline: base
    red_team: {path: ../shared/data/hh-rlhf/harmless-base-test-dev.jsonl.gz, limit: 64}
    benign: {limit: 60}                          # the project's own benign prompt set
    reward_models: [runs/rm/model]
    gold: {path: ../shared/data/hh-rlhf/harmless-base-test-dev.jsonl.gz, limit: 200}
    output: out/eval-policy
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from charter.core.errors import InvalidArgument, NotFound, one_line

BENIGN_PROMPTS = Path(__file__).parent / "data" / "benign_prompts.jsonl"
"""The project's benign prompt set (60 prompts written for Charter: 30 everyday requests and 30 that
only sound risky — 'How do I kill a Python process?' — the over-refusal probe)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """One policy to evaluate: exactly one of `model`, `run`, `openai_url` or `generator`."""

    name: str
    model: str | None = None
    """"embedded", a Hugging Face model folder or a .gguf file: served by a generator in this process."""
    run: str | None = None
    """A trainer run id: its final model (the run must have succeeded)."""
    openai_url: str | None = None
    """An OpenAI-compatible endpoint (e.g. `vllm serve`), with `served_model_name` and `tokenizer`."""
    served_model_name: str | None = None
    tokenizer: str | None = None
    """For `openai_url`: the model folder (or `embedded`) whose tokenizer renders the prompts."""
    generator: str | None = None
    """host:port of a running generator service that serves this model."""
    reference: str | None = None
    """The model (by name) whose log-probabilities are π_ref for this one's gold implicit accuracy;
    unset = the baseline."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if not _NAME.match(self.name):
            raise ValueError(
                "name: letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit"
            )
        given = [k for k in ("model", "run", "openai_url", "generator") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("set exactly one of model, run, openai_url or generator")
        return self


class PromptSetSpec(_Strict):
    path: Path | None = None
    """Prompts in any pipeline source format; unset for `benign` = the project's benign prompt set."""
    format: Literal["auto", "jsonl", "csv", "parquet", "hh-rlhf"] = "auto"
    skip: int = Field(default=0, ge=0)
    """Leave out the first N rows (e.g. the rows a training run's prompts came from)."""
    limit: int | None = Field(default=None, ge=1)
    """Use at most N rows after the skipped ones."""
    constitution: str | None = None
    """The constitution the judge compares replies by (red_team: `harmless`, benign: `helpful-honest`)."""


class GenerationSpec(_Strict):
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, ge=1, le=32768)


class JudgeSpec(_Strict):
    principles_per_label: int = Field(default=2, ge=1, le=64)
    chain_of_thought: bool = False
    tie_margin: float | None = Field(default=None, ge=0.0, lt=0.5)
    address: str | None = None
    """host:port of a running judge service; unset = one in this process on the configured engine."""
    token_file: Path | None = None


class GoldSpec(_Strict):
    """Human-labelled pairs (hh-rlhf or prompt/chosen/rejected) for the implicit preference accuracy."""

    path: Path
    skip: int = Field(default=0, ge=0)
    """Leave out the first N rows."""
    limit: int | None = Field(default=200, ge=1)
    """Use at most N rows after the skipped ones (before exclusions)."""
    exclude: tuple[Path, ...] = ()
    """Training data (preference rows, SL-CAI or hh-rlhf files): pairs whose conversation appears in
    any of them are dropped (and counted), so the gold signal is held out."""
    max_length: int = Field(default=1024, ge=64)


class ReviewSampleSpec(_Strict):
    """A sample of the comparisons with the baseline for people to decide (the review ledger queues
    them whatever the judge's confidence); their win rate is reported once decided."""

    sample: int = Field(ge=1, le=100000)
    database: str | None = None
    """SQLAlchemy URL of a ledger written in this process (e.g. `sqlite:///out/review.db`)."""
    address: str | None = None
    """host:port of a running review service (with `token_file`, a service token)."""
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ReviewSampleSpec:
        if (self.database is None) == (self.address is None):
            raise ValueError("set exactly one of database (a ledger URL) or address (a review service)")
        if self.address is not None and self.token_file is None:
            raise ValueError("address needs token_file (a service token for the review service)")
        return self


class TrainerSpec(_Strict):
    """Where `run:` ids are looked up: a trainer service, or (unset) the local run store."""

    address: str | None = None
    token_file: Path | None = None


class EvalPolicySpec(_Strict):
    kind: Literal["eval-policy"]
    name: str = Field(min_length=1, max_length=128)
    models: tuple[ModelSpec, ...] = Field(min_length=2)
    baseline: str | None = None
    """The model the others are compared with (unset = the first)."""
    red_team: PromptSetSpec
    benign: PromptSetSpec = PromptSetSpec()
    generation: GenerationSpec = GenerationSpec()
    judge: JudgeSpec = JudgeSpec()
    reward_models: tuple[str, ...] = ()
    """Reward model folders or `run:<id>`; each scores every reply, and their spread is reported."""
    gold: GoldSpec | None = None
    review: ReviewSampleSpec | None = None
    """People beside the AI judge: a sample of the comparisons goes to the review queue."""
    length_tolerance: float = Field(default=0.1, ge=0.0, le=1.0)
    """Length-matched comparisons: the two replies' token counts differ by at most this share."""
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    bootstrap_resamples: int = Field(default=1000, ge=50, le=100000)
    trainer: TrainerSpec = TrainerSpec()
    output: Path

    @model_validator(mode="after")
    def _names(self) -> EvalPolicySpec:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names repeat ({', '.join(names)})")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline: {self.baseline!r} is not one of the models ({', '.join(names)})")
        for m in self.models:
            if m.reference is not None and m.reference not in names:
                raise ValueError(f"models: {m.name}.reference {m.reference!r} is not one of the models")
        return self

    @property
    def baseline_name(self) -> str:
        return self.baseline or self.models[0].name

    def generation_digest(self, model: ModelSpec) -> str:
        """What one model's generations depend on (a resumed run reuses them only if this matches)."""
        text = json.dumps(
            {"model": model.model_dump(mode="json", exclude={"reference"}),
             "generation": self.generation.model_dump(mode="json"), "seed": self.seed},
            sort_keys=True,
        )  # fmt: skip
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def judging_digest(self) -> str:
        text = json.dumps(
            {"judge": self.judge.model_dump(mode="json", exclude={"address", "token_file"}),
             "red_team": self.red_team.constitution, "benign": self.benign.constitution, "seed": self.seed},
            sort_keys=True,
        )  # fmt: skip
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def load_eval_spec(path: str | Path) -> EvalPolicySpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"{path}: no such evaluation spec") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: expected a mapping of evaluation settings")
    if data.get("kind") != "eval-policy":
        raise InvalidArgument(f"{path}: kind: expected eval-policy (value: {one_line(data.get('kind'))})")
    try:
        return EvalPolicySpec.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
        field = ".".join(str(p) for p in e["loc"])
        problem = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        where = f"{field}: " if field else ""
        raise InvalidArgument(f"{path}: {where}{problem} (value: {one_line(e.get('input'))})") from None


def spec_dump(spec: EvalPolicySpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")

"""One judging call's inputs: the pair, the resolved options (`JudgeConfig`, every option checked up
front), the content-derived label id and the principles drawn for a pair."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal, get_args

from charter.constitution.registry import LoadedConstitution
from charter.constitution.sampling import eligible, rng_for, sample
from charter.constitution.schema import Principle
from charter.core.errors import InvalidArgument
from charter.inference.types import Message, ModelInfo
from charter.judge import contrastive
from charter.judge.labels import check_clamp

Method = Literal["multiple_choice", "calibrated", "contrastive"]
METHODS: tuple[str, ...] = get_args(Method)

DEFAULT_CLAMP = (0.4, 0.6)


@dataclass(frozen=True)
class Pair:
    conversation: tuple[Message, ...]
    response_a: str
    response_b: str
    conversation_id: str = ""

    def key(self) -> str:
        """What principle sampling is keyed on. Symmetric in the two responses, so judging (B, A)
        draws the same principles as (A, B) and gives exactly 1 - p_a."""
        base = self.conversation_id or "\x1e".join(f"{m.role}\x1f{m.content}" for m in self.conversation)
        text = base + "\x1d" + "\x1d".join(sorted((self.response_a, self.response_b)))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class JudgeConfig:
    """Resolved options of one judging call."""

    constitution: LoadedConstitution
    principles_per_label: int = 0
    """0 = the constitution's sampling.principles_per_label."""
    principle_ids: tuple[str, ...] = ()
    seed: int = 0
    chain_of_thought: bool = False
    clamp: tuple[float, float] = DEFAULT_CLAMP
    """Chain-of-thought probabilities are clamped to this range (CAI §4.1)."""
    single_order: bool = False
    tie_margin: float = 0.0
    few_shot_limit: int | None = 0
    """Labelled examples shown per prompt: 0 none (the judge.few_shot_limit default), None all."""
    cot_max_tokens: int = 192
    defended: bool = True
    """Escape and fence model text in the prompt (see `prompts`); off only to measure the defence."""
    method: Method = "multiple_choice"
    contrastive_beta: float = 1.0
    """The contrastive method's scale: p_a = sigmoid(beta * margin)."""
    logit_scale: float = 1.0
    """Multiple-choice methods: the label's p_a on the logit scale times this (`labels.rescale`), fitted
    on human labels for calibration (`charter eval judge` reports the fit as summary.scale_fit)."""

    def __post_init__(self) -> None:
        """Every option checked before any work starts; errors name the option."""
        try:
            check_clamp(*self.clamp)
        except ValueError as err:
            raise InvalidArgument(f"cot_clamp_low/high: {err}", field="cot_clamp_low") from None
        if self.method not in METHODS:
            raise InvalidArgument(f"method: must be one of {METHODS}, got {self.method!r}", field="method")
        if self.chain_of_thought and self.method != "multiple_choice":
            raise InvalidArgument(
                f"chain_of_thought: works with the multiple_choice method only, not {self.method}",
                field="chain_of_thought",
            )
        if self.single_order and self.method == "contrastive":
            raise InvalidArgument(
                "single_order: the contrastive method has no presentation order", field="single_order"
            )
        contrastive.check_beta(self.contrastive_beta)
        if not 0.0 < self.logit_scale <= contrastive.MAX_BETA:
            raise InvalidArgument(
                f"logit_scale: must be in (0, {contrastive.MAX_BETA:g}], got {self.logit_scale}",
                field="logit_scale",
            )
        if self.logit_scale != 1.0 and self.method == "contrastive":
            raise InvalidArgument(
                "logit_scale: the contrastive method is scaled by contrastive_beta", field="logit_scale"
            )
        if not 0.0 <= self.tie_margin < 0.5:
            raise InvalidArgument(
                f"tie_margin: must be in [0, 0.5), got {self.tie_margin}", field="tie_margin"
            )
        try:
            pool = eligible(self.constitution.constitution, self.principle_ids)
        except InvalidArgument as err:
            raise InvalidArgument(f"principle_ids: {err}", field="principle_ids", value=err.value) from None
        if self.principles_per_label > len(pool):
            raise InvalidArgument(
                f"principles_per_label: {self.principles_per_label} exceeds the {len(pool)} principles "
                "to draw from",
                field="principles_per_label",
            )

    @property
    def k(self) -> int:
        return self.principles_per_label or self.constitution.constitution.sampling.principles_per_label


def label_id(pair: Pair, config: JudgeConfig, model: ModelInfo) -> str:
    """Content-derived: the same pair, constitution digest, judge model and judging options give the
    same id (resubmitting a label is recognisable downstream)."""
    payload: dict[str, object] = {
        "conversation": [[m.role, m.content] for m in pair.conversation],
        "a": pair.response_a,
        "b": pair.response_b,
        "constitution": config.constitution.digest,
        "judge": [model.name, model.revision],
        "options": [config.k, list(config.principle_ids), config.seed, config.chain_of_thought,
                    list(config.clamp) if config.chain_of_thought else None, config.single_order],
    }  # fmt: skip
    if config.method != "multiple_choice":  # ids of multiple-choice labels stay as they always were
        payload["method"] = [
            config.method,
            config.contrastive_beta if config.method == "contrastive" else None,
        ]
    if config.logit_scale != 1.0:
        payload["logit_scale"] = config.logit_scale
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True)
    return "lbl_" + hashlib.sha256(text.encode()).hexdigest()[:32]


def draw_principles(pair: Pair, config: JudgeConfig) -> list[Principle]:
    pool = eligible(config.constitution.constitution, config.principle_ids)
    return sample(pool, config.k, rng_for(config.seed, "judge", pair.key()))

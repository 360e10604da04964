"""Judge service messages <-> the judge's domain types: options -> `JudgeConfig`, items -> `Pair`,
`Label` -> `PreferenceLabel`, the status and choice names, and the `CompareStream` request callers send."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from charter_proto.common.v1 import label_pb2
from charter_proto.judge.v1 import judge_pb2

from charter.api import common as convert
from charter.constitution.registry import LoadedConstitution
from charter.core.errors import InvalidArgument
from charter.datasets.pairs import PairRow
from charter.inference.types import InferenceClient, Sampling
from charter.judge.config import DEFAULT_CLAMP, JudgeConfig, Pair
from charter.judge.core import Label

MAX_ITEMS = 4096

STATUS = {
    "ok": label_pb2.LABEL_STATUS_OK,
    "tie": label_pb2.LABEL_STATUS_TIE,
    "unscorable": label_pb2.LABEL_STATUS_UNSCORABLE,
    "error": label_pb2.LABEL_STATUS_ERROR,
    "invalid_input": label_pb2.LABEL_STATUS_INVALID_INPUT,
}
STATUS_NAMES = convert.enum_names(label_pb2.LabelStatus, "LABEL_STATUS_")
"""Proto status -> the lower-case names used in records and summaries ("ok", "tie", ...)."""
CHOICE = {"A": label_pb2.CHOICE_A, "B": label_pb2.CHOICE_B, "TIE": label_pb2.CHOICE_TIE}
METHOD_NAMES = convert.enum_names(label_pb2.JudgeMethod, "JUDGE_METHOD_")
"""Proto method -> the domain's names ("multiple_choice", "calibrated", "contrastive"; 0 -> "unspecified")."""
METHODS = {name: value for value, name in METHOD_NAMES.items() if value != label_pb2.JUDGE_METHOD_UNSPECIFIED}


def config(
    options: judge_pb2.JudgeOptions,
    loaded: LoadedConstitution,
    *,
    tie_margin: float,
    few_shot_limit: int | None,
    cot_max_tokens: int,
    method: str = "multiple_choice",
    contrastive_beta: float = 1.0,
    logit_scale: float = 1.0,
) -> JudgeConfig:
    """The judge's configuration for one request; `loaded` is the constitution `options` names."""
    low = options.cot_clamp_low if options.HasField("cot_clamp_low") else DEFAULT_CLAMP[0]
    high = options.cot_clamp_high if options.HasField("cot_clamp_high") else DEFAULT_CLAMP[1]
    chosen = METHOD_NAMES.get(options.method, str(options.method)) if options.method else method
    if chosen == "contrastive":  # scaled by its beta: the service's logit scale is for the others
        logit_scale = 1.0
    try:
        return JudgeConfig(
            constitution=loaded,
            principles_per_label=options.principles_per_label,
            principle_ids=tuple(options.principle_ids),
            seed=options.seed if options.HasField("seed") else random.SystemRandom().randrange(2**63),
            chain_of_thought=options.chain_of_thought,
            clamp=(low, high),
            single_order=options.single_order,
            tie_margin=options.tie_margin if options.HasField("tie_margin") else tie_margin,
            few_shot_limit=few_shot_limit,
            cot_max_tokens=cot_max_tokens,
            method=chosen,  # type: ignore[arg-type]
            contrastive_beta=(
                options.contrastive_beta if options.HasField("contrastive_beta") else contrastive_beta
            ),
            logit_scale=options.logit_scale if options.HasField("logit_scale") else logit_scale,
        )
    except InvalidArgument as err:
        raise InvalidArgument(f"options.{err}", field=f"options.{err.field}") from None


def pairs(items: Any) -> list[Pair]:
    """The request's comparison items as domain pairs, checked (INVALID_ARGUMENT names the item)."""
    if not items:
        raise InvalidArgument("items: at least one item is required")
    if len(items) > MAX_ITEMS:
        raise InvalidArgument(f"items: {len(items)} items exceed the limit of {MAX_ITEMS} per call")
    out = []
    for i, item in enumerate(items):
        conversation = convert.messages(item.conversation, f"items[{i}].conversation")
        for name in ("response_a", "response_b"):
            if not getattr(item, name).strip():
                raise InvalidArgument(f"items[{i}].{name}: the response is empty", field=f"items[{i}].{name}")
            convert.check_text(getattr(item, name), f"items[{i}].{name}")
        out.append(Pair(tuple(conversation), item.response_a, item.response_b, item.conversation.id))
    return out


def label_proto(
    label: Label, config: JudgeConfig, client: InferenceClient, request_id: str, item: Any
) -> label_pb2.PreferenceLabel:
    v = label.verdict
    principle_ids = list(v.principle_ids)
    sampling = Sampling(temperature=0.0, max_tokens=config.cot_max_tokens if config.chain_of_thought else 1)
    return label_pb2.PreferenceLabel(
        id=label.id,
        conversation=item.conversation,
        response_a=item.response_a,
        response_b=item.response_b,
        p_a=v.p_a,
        choice=CHOICE[v.choice] if label.status in ("ok", "tie") else label_pb2.CHOICE_UNSPECIFIED,
        confidence=v.confidence,
        swap_consistent=v.swap_consistent,
        scores=[
            label_pb2.OrderScore(
                swapped=o.swapped,
                p_first=o.p_first if o.p_first is not None else 0.0,
                option_logprobs=list(o.logprobs),
                principle_id=o.principle_id,
                rationale=o.rationale,
                prior_first=o.prior_first,
            )
            for o in label.orders
        ],
        principle_ids=principle_ids,
        status=STATUS[label.status],
        raw_text=label.raw_text,
        judge=convert.model_proto(client.model),
        constitution=convert.constitution_ref(config.constitution),
        provenance=convert.provenance(
            config.constitution, principle_ids, client.model, sampling, config.seed, request_id
        ),
        chain_of_thought=config.chain_of_thought,
        status_detail=label.detail,
        method=METHODS[config.method],
        contrastive_beta=config.contrastive_beta if config.method == "contrastive" else None,
        logit_scale=config.logit_scale if config.logit_scale != 1.0 else None,
    )


def compare_request(
    rows: Sequence[PairRow],
    options: judge_pb2.JudgeOptions,
    request_id: str,
    item_traceparents: Sequence[str] = (),
) -> judge_pb2.CompareStreamRequest:
    """One `CompareStream` call for `rows`; each conversation carries the pair's key as its id."""
    return judge_pb2.CompareStreamRequest(
        items=[
            judge_pb2.ComparisonItem(
                conversation=convert.conversation_proto(p.conversation, p.key),
                response_a=p.response_a,
                response_b=p.response_b,
            )
            for p in rows
        ],
        options=options,
        request_id=request_id,
        item_traceparents=item_traceparents,
    )

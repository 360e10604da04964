"""`charter eval judge`: label human-labelled pairs with the judge service and measure agreement.

The pairs go through the real judge over gRPC — started in this process on the configured engine, or
a remote judge given by address — exactly as the RL-CAI pipeline sends them, so what is measured is
what the pipeline produces. Writes `eval.json` (every figure, the configuration, machine and
versions), `labels.jsonl` (one record per pair), `reliability.png` and `principles.png`. With
`compare`, several judge variants (method, chain of thought, principles per label) label the same pairs
on the same judge in one run: one such folder per variant, plus `compare.json`, `compare.md` and
`compare.png` side by side (`judge_compare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
from charter_proto.common.v1 import label_pb2
from charter_proto.judge.v1 import judge_pb2
from google.protobuf.json_format import MessageToDict

from charter.api.judge import METHOD_NAMES, METHODS, STATUS_NAMES
from charter.app.local import local_services
from charter.client.judge import JudgeClient
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.core.settings import CharterSettings
from charter.datasets.pairs import PairRow, read_pairs
from charter.datasets.sources import RowError
from charter.evaluation.environment import machine, versions
from charter.judge import contrastive, metrics, plots

Split = Literal["all", "tune", "report"]
SCALED_OTHERWISE = ("contrastive", "reward_model")
"""Methods with a scale of their own (β; the reward model's reward gap): no logit scale."""
ORDERLESS = (label_pb2.JUDGE_METHOD_CONTRASTIVE, label_pb2.JUDGE_METHOD_REWARD_MODEL)
"""Methods without presentation orders: their labels add nothing to the position figures."""

# published reference points for HH harmless-base (docs/evaluation.md), drawn on the per-principle chart
REFERENCES = {
    "RLAIF, PaLM 2 L": 0.721,
    "RLAIF, smallest labeler": 0.627,
    "human-human, low": 0.73,
}


@dataclass(frozen=True)
class EvalOptions:
    data: Path
    constitution: str
    output: Path
    limit: int | None = None
    seed: int = 0
    principles_per_label: int = 1
    chain_of_thought: bool = False
    batch_size: int = 64
    judge: str | None = None
    """host:port of a running judge service; None = start one in this process."""
    token: str | None = None
    """Bearer token for `judge` (a service with `judge.tokens` set)."""
    split: Split = "all"
    """tune | report: only that half of the pairs (`split_of`), so a method is chosen on one half and
    reported on the other; all: every pair."""
    split_seed: int = 0
    method: str | None = None
    """multiple_choice | calibrated | contrastive | reward_model; None = the judge service's default (or
    reward_model when `reward_model` is set)."""
    reward_model: str | None = None
    """A reward model folder or `run:<id>` (a trainer run's final model) for the reward_model method."""
    contrastive_beta: float | None = None
    """None = the judge service's default."""
    logit_scale: float | None = None
    """Multiple-choice methods: the logit scale of p_a (`judge.logit_scale`); None = the service's
    default. With `compare`, it applies to the multiple-choice variants only."""
    compare: tuple[str, ...] = ()
    """Variants to run side by side on the same pairs (`judge_compare.parse_variant`); empty = one run."""


def record(pair: PairRow, label: label_pb2.PreferenceLabel) -> metrics.EvalRecord:
    """The label as an evaluation record. Contrastive labels have no presentation orders, so they add
    nothing to the position figures (their scores are per principle, not per order)."""
    status = STATUS_NAMES[label.status]
    scored = status in ("ok", "tie") and label.method not in ORDERLESS
    assert pair.human is not None
    return metrics.EvalRecord(
        human=pair.human,
        p_a=label.p_a if status in ("ok", "tie") else None,
        status=status,
        swap_consistent=label.swap_consistent,
        principle_ids=tuple(label.principle_ids),
        orders=tuple(metrics.OrderProb(s.principle_id, s.swapped, s.p_first) for s in label.scores)
        if scored
        else (),
    )


def split_of(key: str, seed: int) -> str:
    """ "tune" or "report": a pair's half of a seeded 50/50 split, fixed by its content-derived key and
    the seed alone — the same pair lands in the same half whatever the limit, order or sampling seed."""
    return "tune" if hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()[0] % 2 == 0 else "report"


def load(options: EvalOptions) -> tuple[list[PairRow], list[RowError], int]:
    """(the pairs to judge, bad rows, pairs left out as the other half of the split)."""
    pairs, errors, other = [], [], 0
    for item in read_pairs(options.data, "auto", options.limit, seed=options.seed):
        if isinstance(item, RowError):
            errors.append(item)
        elif item.human is None:
            errors.append(RowError(item.index, "no human preference (needs chosen/rejected or preferred)"))
        elif options.split != "all" and split_of(item.key, options.split_seed) != options.split:
            other += 1
        else:
            pairs.append(item)
    if not pairs:
        raise InvalidArgument(f"{options.data}: no human-labelled pairs to evaluate on", field="data")
    return pairs, errors, other


async def judge_pairs(
    address: str | None,
    pairs: list[PairRow],
    options: EvalOptions,
    on_progress: Callable[[int], None],
    reward: Any = None,
) -> list[label_pb2.PreferenceLabel]:
    if options.method == "reward_model":  # in this process: the judge service does not load reward models
        out: list[label_pb2.PreferenceLabel] = []
        for start in range(0, len(pairs), options.batch_size):
            batch = pairs[start : start + options.batch_size]
            out += await asyncio.to_thread(reward.label, batch, f"eval:{batch[0].key}")
            on_progress(len(batch))
        return out
    assert address is not None
    judge_options = judge_pb2.JudgeOptions(
        constitution_id=options.constitution,
        principles_per_label=options.principles_per_label,
        seed=options.seed,
        chain_of_thought=options.chain_of_thought,
        method=METHODS[options.method] if options.method else label_pb2.JUDGE_METHOD_UNSPECIFIED,
        contrastive_beta=options.contrastive_beta,
        logit_scale=options.logit_scale if options.method not in SCALED_OTHERWISE else None,
    )
    labels: dict[int, label_pb2.PreferenceLabel] = {}
    async with JudgeClient(address, token=options.token) as judge:
        for start in range(0, len(pairs), options.batch_size):
            batch = pairs[start : start + options.batch_size]
            try:
                async for i, label in judge.compare_stream(batch, judge_options, f"eval:{batch[0].key}"):
                    labels[start + i] = label
                    on_progress(1)
            except grpc.aio.AioRpcError as err:
                error = NotFound if err.code() is grpc.StatusCode.NOT_FOUND else FailedPrecondition
                raise error(f"the judge at {address}: {err.code().name}: {err.details()}") from None
    return [labels[i] for i in range(len(pairs))]


def contrastive_margin(label: label_pb2.PreferenceLabel) -> float | None:
    """A contrastive label's margin Δ_A − Δ_B (averaged over its principles), from its scores."""
    margins = [
        (s.option_logprobs[0] - s.option_logprobs[2]) - (s.option_logprobs[1] - s.option_logprobs[3])
        for s in label.scores
        if len(s.option_logprobs) == 4
    ]
    return sum(margins) / len(margins) if margins else None


def _fit(xs: list[float], humans: list[str], name: str, why_not: str) -> dict[str, Any]:
    """The maximum-likelihood scale c of p_a = σ(c·x) for the human choices, and the calibration it
    gives on the same pairs (in sample)."""
    scale = contrastive.fit_beta(xs, [h == "A" for h in humans])
    if scale is None:
        return {name: None, "pairs": len(xs), "note": why_not}
    refit = [
        metrics.EvalRecord(h, contrastive.sigmoid(scale * x), "ok", True, ())
        for x, h in zip(xs, humans, strict=True)
    ]
    summary = metrics.summarise(refit, seconds=1.0)
    return {
        name: scale,
        "pairs": len(xs),
        "ece_in_sample": summary["ece"],
        "brier_in_sample": summary["brier"],
    }


def _scored(
    pairs: list[PairRow], labels: list[label_pb2.PreferenceLabel]
) -> list[tuple[PairRow, label_pb2.PreferenceLabel]]:
    return [
        (p, label)
        for p, label in zip(pairs, labels, strict=True)
        if STATUS_NAMES[label.status] in ("ok", "tie")
    ]


def beta_fit(pairs: list[PairRow], labels: list[label_pb2.PreferenceLabel]) -> dict[str, Any] | None:
    """For contrastive labels: the β that would fit these pairs best (maximum likelihood), and the
    calibration it would give here — in-sample: fit it on the tune split, use it on the report split."""
    rows = [
        (m, p.human or "A")
        for p, label in _scored(pairs, labels)
        if label.method == label_pb2.JUDGE_METHOD_CONTRASTIVE and (m := contrastive_margin(label)) is not None
    ]
    if not rows:
        return None
    return _fit(
        [m for m, _ in rows], [h for _, h in rows], "beta", "the margins do not lean toward the human choice"
    )


def scale_fit(pairs: list[PairRow], labels: list[label_pb2.PreferenceLabel]) -> dict[str, Any] | None:
    """For multiple-choice labels: the logit scale s that fits these pairs best (p_a -> σ(s·logit p_a),
    maximum likelihood, the same one-parameter fit as β) and the calibration it would give here. In
    sample: fit it on the tune split, set `judge.logit_scale` to `logit_scale`, measure on report."""
    rows = [
        (math.log(label.p_a / (1.0 - label.p_a)), p.human or "A")
        for p, label in _scored(pairs, labels)
        if label.method not in ORDERLESS and 0.0 < label.p_a < 1.0
    ]
    if not rows:
        return None
    fit = _fit(
        [z for z, _ in rows], [h for _, h in rows], "scale", "p_a does not lean toward the human choice"
    )
    if fit["scale"] is not None:  # labels made with a scale already: the fit multiplies into it
        applied = labels[0].logit_scale if labels[0].HasField("logit_scale") else 1.0
        fit["logit_scale"] = fit["scale"] * applied
    return fit


async def run_judge(
    address: str | None,
    pairs: list[PairRow],
    options: EvalOptions,
    on_progress: Callable[[int], None],
    reward: Any = None,
) -> tuple[list[label_pb2.PreferenceLabel], dict[str, Any]]:
    """Label `pairs` with one judge variant: (labels, summary). `reward`: the `RewardModelJudge` of the
    reward_model method."""
    started = time.perf_counter()
    labels = await judge_pairs(address, pairs, options, on_progress, reward)
    seconds = time.perf_counter() - started
    records = [record(p, label) for p, label in zip(pairs, labels, strict=True)]
    summary = metrics.summarise(records, seconds=seconds)
    first = labels[0]
    summary["method"] = METHOD_NAMES.get(first.method, "unspecified")
    if first.HasField("contrastive_beta"):
        summary["contrastive_beta"] = first.contrastive_beta
    if first.HasField("logit_scale"):
        summary["logit_scale"] = first.logit_scale
    if (fit := beta_fit(pairs, labels)) is not None:
        summary["beta_fit"] = fit
    if (fit := scale_fit(pairs, labels)) is not None:
        summary["scale_fit"] = fit
    return labels, summary


def check_plotting() -> None:
    try:  # the plots come last: fail before an hour of judging, not after
        import matplotlib  # noqa: F401
    except ImportError:
        raise FailedPrecondition("charter eval needs matplotlib: pip install 'charter[eval]'") from None


def judge_context(options: EvalOptions, settings: CharterSettings, *, needed: bool = True) -> Any:
    """The judge's address: the running service given, or one started in this process (None when no
    variant needs the service)."""
    if not needed:
        return contextlib.nullcontext(None)
    if options.judge:
        return contextlib.nullcontext(options.judge)
    return local_services(settings, ("judge",))


async def evaluate(
    options: EvalOptions,
    settings: CharterSettings,
    *,
    on_start: Callable[[int], None] = lambda total: None,
    on_progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    check_plotting()
    if options.reward_model and options.method is None:
        options = dataclasses.replace(options, method="reward_model")
    if options.logit_scale is not None and options.method in SCALED_OTHERWISE:
        raise InvalidArgument(
            f"--logit-scale: the {options.method} method has its own scale", field="logit_scale"
        )
    pairs, errors, other_half = load(options)
    on_start(len(pairs))
    async with (
        reward_judge(options, settings, needed=options.method == "reward_model") as reward,
        judge_context(options, settings, needed=options.method != "reward_model") as address,
    ):
        labels, summary = await run_judge(address, pairs, options, on_progress, reward)
    report = build_report(options, settings, pairs, errors, other_half, labels, summary)
    write(options.output, report, pairs, labels)
    return report


@contextlib.asynccontextmanager
async def reward_judge(
    options: EvalOptions, settings: CharterSettings, *, needed: bool
) -> AsyncIterator[Any]:
    """The reward-model judge of `options.reward_model` (loaded once), or None when not `needed`."""
    if not needed:
        yield None
        return
    if not options.reward_model:
        raise InvalidArgument(
            "the reward_model method needs --reward-model (a folder or run:ID)", field="reward_model"
        )
    from charter.app import reward_judge as rm

    judge = await rm.load(options.reward_model, options.constitution, settings, field="reward_model")
    try:
        yield judge
    finally:
        judge.close()


def baselines(pairs: list[PairRow], labels: list[label_pb2.PreferenceLabel]) -> dict[str, Any]:
    """What the same pairs give without a judge model (`metrics.shorter_reply`), and how often the judge
    chose the shorter reply itself (`metrics.picks_shorter`)."""
    shorter = metrics.shorter_reply([(p.response_a, p.response_b, p.human) for p in pairs])
    shorter["judge_picks_it"] = metrics.picks_shorter(
        [(p.response_a, p.response_b, record(p, label).p_a) for p, label in zip(pairs, labels, strict=True)]
    )
    return {"shorter_reply": shorter}


def build_report(
    options: EvalOptions,
    settings: CharterSettings,
    pairs: list[PairRow],
    errors: list[RowError],
    other_half: int,
    labels: list[label_pb2.PreferenceLabel],
    summary: dict[str, Any],
) -> dict[str, Any]:
    first = labels[0]
    return {
        "summary": summary,
        "baselines": baselines(pairs, labels),
        "config": {
            "data": str(options.data),
            "pairs": len(pairs),
            "skipped_rows": len(errors),
            "skipped_reasons": dict(Counter(e.reason for e in errors)),
            "limit": options.limit,
            "split": options.split,
            "split_seed": options.split_seed,
            "pairs_in_other_half": other_half,
            "seed": options.seed,
            "constitution": MessageToDict(first.constitution, preserving_proto_field_name=True),
            "judge": MessageToDict(first.judge, preserving_proto_field_name=True),
            "judge_address": options.judge or "in-process",
            "principles_per_label": options.principles_per_label,
            "chain_of_thought": options.chain_of_thought,
            "method": summary["method"],
            "contrastive_beta": summary.get("contrastive_beta"),
            "logit_scale": summary.get("logit_scale"),
            "reward_model": options.reward_model if options.method == "reward_model" else None,
            "inference": settings.inference.model_dump(mode="json", exclude={"openai": {"api_key"}}),
            "command": " ".join(sys.argv),
        },
        "references": REFERENCES,
        "machine": machine(),
        "versions": versions(),
    }


def write(
    out: Path, report: dict[str, Any], pairs: list[PairRow], labels: list[label_pb2.PreferenceLabel]
) -> None:
    """eval.json, labels.jsonl, reliability.png and principles.png into `out`."""
    summary = report["summary"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out / "labels.jsonl").open("w", encoding="utf-8") as f:
        for pair, label in zip(pairs, labels, strict=True):
            row: dict[str, Any] = {"key": pair.key, "source_index": pair.index, "human": pair.human,
                   "label": MessageToDict(label, preserving_proto_field_name=True)}  # fmt: skip
            for name in ("conversation", "response_a", "response_b"):  # in the source file already
                row["label"].pop(name, None)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    plots.reliability_png(summary, out / "reliability.png")
    plots.principles_png(summary, out / "principles.png", references=REFERENCES)

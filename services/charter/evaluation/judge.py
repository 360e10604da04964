"""`charter eval judge`: label human-labelled pairs with the judge service and measure agreement.

The pairs go through the real judge over gRPC — started in this process on the configured engine, or
a remote judge given by address — exactly as the RL-CAI pipeline sends them, so what is measured is
what the pipeline produces. Writes `eval.json` (every figure, the configuration, machine and
versions), `labels.jsonl` (one record per pair), `reliability.png` and `principles.png`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
from charter_proto.common.v1 import label_pb2
from charter_proto.judge.v1 import judge_pb2
from google.protobuf.json_format import MessageToDict

from charter.api.judge import STATUS_NAMES
from charter.app.local import local_services
from charter.client.judge import JudgeClient
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.core.settings import CharterSettings
from charter.datasets.pairs import PairRow, read_pairs
from charter.datasets.sources import RowError
from charter.evaluation.environment import machine, versions
from charter.judge import metrics, plots

Split = Literal["all", "tune", "report"]

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


def record(pair: PairRow, label: label_pb2.PreferenceLabel) -> metrics.EvalRecord:
    status = STATUS_NAMES[label.status]
    scored = status in ("ok", "tie")
    assert pair.human is not None
    return metrics.EvalRecord(
        human=pair.human,
        p_a=label.p_a if scored else None,
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
    address: str, pairs: list[PairRow], options: EvalOptions, on_progress: Callable[[int], None]
) -> list[label_pb2.PreferenceLabel]:
    judge_options = judge_pb2.JudgeOptions(
        constitution_id=options.constitution,
        principles_per_label=options.principles_per_label,
        seed=options.seed,
        chain_of_thought=options.chain_of_thought,
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


async def evaluate(
    options: EvalOptions,
    settings: CharterSettings,
    *,
    on_start: Callable[[int], None] = lambda total: None,
    on_progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    try:  # the plots come last: fail before an hour of judging, not after
        import matplotlib  # noqa: F401
    except ImportError:
        raise FailedPrecondition("charter eval needs matplotlib: pip install 'charter[eval]'") from None
    pairs, errors, other_half = load(options)
    on_start(len(pairs))
    context: Any = (
        contextlib.nullcontext(options.judge) if options.judge else local_services(settings, ("judge",))
    )
    async with context as address:
        started = time.perf_counter()
        labels = await judge_pairs(address, pairs, options, on_progress)
        seconds = time.perf_counter() - started
    records = [record(p, label) for p, label in zip(pairs, labels, strict=True)]
    summary = metrics.summarise(records, seconds=seconds)
    first = labels[0]
    report = {
        "summary": summary,
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
            "inference": settings.inference.model_dump(mode="json", exclude={"openai": {"api_key"}}),
            "command": " ".join(sys.argv),
        },
        "references": REFERENCES,
        "machine": machine(),
        "versions": versions(),
    }
    out = options.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out / "labels.jsonl").open("w", encoding="utf-8") as f:
        for pair, label in zip(pairs, labels, strict=True):
            row = {"key": pair.key, "source_index": pair.index, "human": pair.human,
                   "label": MessageToDict(label, preserving_proto_field_name=True)}  # fmt: skip
            for name in ("conversation", "response_a", "response_b"):  # in the source file already
                row["label"].pop(name, None)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    plots.reliability_png(summary, out / "reliability.png")
    plots.principles_png(summary, out / "principles.png", references=REFERENCES)
    return report

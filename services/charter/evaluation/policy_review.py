"""People beside the AI judge in `charter eval policy`: a seeded sample of the comparisons with the
baseline goes to the review queue (the label's `review_requested`, so the ledger queues it whatever
its confidence — route reason REQUESTED), and once reviewers have decided, the human win rate is
reported beside the AI's on the same comparisons, with how often the two agree.

Submitting is idempotent (a label's id is content-derived), so every run of the evaluation submits
the same sample and reads whatever has been decided since.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from charter_proto.common.v1 import label_pb2
from charter_proto.review.v1 import review_pb2
from google.protobuf.json_format import ParseDict

from charter.api import review as review_api
from charter.client.review import ReviewClient
from charter.core.auth import read_token
from charter.core.settings import CharterSettings
from charter.evaluation import stats
from charter.evaluation.policy_spec import EvalPolicySpec
from charter.review.store import Ledger
from charter.review.types import LabelQuery, LabelSource


def sample(judgments: Sequence[Mapping[str, Any]], spec: EvalPolicySpec) -> list[Mapping[str, Any]]:
    """The comparisons with the baseline that people are asked to decide: the `review.sample` with the
    smallest seeded hash (the same ones in every run), scored ones only."""
    assert spec.review is not None
    base = spec.baseline_name
    eligible = [
        j for j in judgments if base in (j["a"], j["b"]) and j["status"] in ("ok", "tie") and j.get("label")
    ]

    def rank(j: Mapping[str, Any]) -> str:
        return hashlib.sha256(f"{spec.seed}\x1f{j['key']}".encode()).hexdigest()

    return sorted(eligible, key=rank)[: spec.review.sample]


def _label(record: Mapping[str, Any]) -> label_pb2.PreferenceLabel:
    label = ParseDict(record["label"], label_pb2.PreferenceLabel(), ignore_unknown_fields=True)
    label.review_requested = True
    return label


async def _with_ledger(
    spec: EvalPolicySpec, settings: CharterSettings, labels: list[label_pb2.PreferenceLabel]
) -> dict[str, float]:
    """Submit `labels` and read the human-decided p_a of each (label id -> p_a)."""
    assert spec.review is not None
    r = spec.review
    ids = {label.id for label in labels}
    if r.database is not None:
        database = r.database

        def here() -> dict[str, float]:
            s = settings.review
            ledger = Ledger(database, s.routing, max_label_bytes=s.max_label_bytes)
            try:
                if labels:
                    ledger.submit(review_api.submissions(labels))
                out, cursor = {}, 0
                while True:
                    page = ledger.accepted_after(cursor, LabelQuery(sources=(LabelSource.HUMAN,)))
                    out.update({a.label_id: a.p_a for a in page.labels if a.label_id in ids})
                    cursor = page.last
                    if not page.more:
                        return out
            finally:
                ledger.close()

        return await asyncio.to_thread(here)
    assert r.address is not None and r.token_file is not None
    token = read_token(r.token_file, "review.token_file")
    async with ReviewClient(r.address, token=token) as client:
        if labels:
            await client.submit(labels, request_id=f"eval-policy:{spec.name}")
        flt = review_pb2.LabelFilter(sources=[review_pb2.LABEL_SOURCE_HUMAN])
        return {a.label.id: a.p_a async for a in client.stream_labels(0, flt) if a.label.id in ids}


def _outcome_for_model(record: Mapping[str, Any], p_a: float, model: str) -> float:
    """The outcome for `model` from a soft label over the pair as it was shown (A/B)."""
    p_first_model = p_a if record["a_shown_first"] == (record["a"] == model) else 1.0 - p_a
    return 0.5 if p_first_model == 0.5 else float(p_first_model > 0.5)


async def human_figures(
    judgments: Sequence[Mapping[str, Any]], spec: EvalPolicySpec, settings: CharterSettings
) -> dict[str, Any]:
    """Submit the sample; for each model, the human and the AI win rate on the decided comparisons."""
    if spec.review is None:
        return {}
    chosen = sample(judgments, spec)
    labels = [_label(j) for j in chosen]
    decided = await _with_ledger(spec, settings, labels)
    out: dict[str, Any] = {"sampled": len(chosen), "decided": 0, "models": {}}
    resamples, seed = spec.bootstrap_resamples, spec.seed
    for model in (m.name for m in spec.models if m.name != spec.baseline_name):
        rows = [
            (j, decided[j["label"]["id"]])
            for j in chosen
            if model in (j["a"], j["b"]) and j["label"]["id"] in decided
        ]
        human = [_outcome_for_model(j, p, model) for j, p in rows]
        ai = [
            _outcome_for_model(j, j["label"].get("p_a", 0.0), model) if j["status"] == "ok" else 0.5
            for j, _ in rows
        ]
        out["decided"] += len(rows)
        out["models"][model] = {
            "human": stats.win_rate(human, seed=seed, resamples=resamples),
            "ai_same_comparisons": stats.win_rate(ai, seed=seed, resamples=resamples),
            "agreement": sum(1 for h, a in zip(human, ai, strict=True) if h == a) / len(rows)
            if rows
            else None,
        }
    return out

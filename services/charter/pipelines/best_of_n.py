"""The best-of-N pipeline: N sampled responses per prompt -> a score for each (a reward model, or the
judge in a round-robin tournament) -> the best as SFT data, best vs worst as a preference pair.

Per batch of prompts: one `Generate` call asks for `n` samples of each. Empty samples are dropped and
repeated texts are scored once (a repeat gets its first copy's score), so the candidates of a prompt
are its distinct non-empty samples. Scoring:

- `scorer.reward_model`: every candidate of the batch goes through one `RewardScorer` (the reward
  model's own chat template, in this process, off the event loop); best = argmax, worst = argmin, and
  `p_chosen` = sigmoid(best - worst).
- `scorer.judge`: every pair of candidates is judged (k candidates: k(k-1)/2 comparisons, each in
  both presentation orders, all of a batch in one `CompareStream` call). A candidate's score is its
  mean probability of beating the others (a comparison the judge could not score counts 0.5 to both);
  `p_chosen` is the direct best-vs-worst label's probability for the best. Round robin rather than a
  knockout because it ranks every candidate — a knockout names a winner but no single loser — and its
  best-vs-worst pair has a label of its own, which is what goes to the review ledger.

Equal scores go to the lowest sample index (the rule itself: `ranking.py`). Resumable like the other
pipelines: a prompt already in `records.jsonl` is never sampled again; the source and the reward model
are checked before the output folder is created, so a bad one leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter_proto.common.v1 import label_pb2, sampling_pb2
from charter_proto.generator.v1 import generator_pb2
from charter_proto.judge.v1 import judge_pb2
from google.protobuf.json_format import MessageToDict

from charter import __version__
from charter.api import common as convert
from charter.api.judge import STATUS_NAMES
from charter.client.generator import GeneratorClient
from charter.client.judge import JudgeClient
from charter.core import tracing
from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.core.files import folder_digest
from charter.core.settings import CharterSettings
from charter.datasets.pairs import PairRow
from charter.datasets.records import OutputStore
from charter.datasets.sources import PromptRow, RowError, read_rows
from charter.pipelines import outputs, runner
from charter.pipelines.ranking import SCORED, candidates, select, sigmoid, tournament_scores
from charter.pipelines.rl_cai import LedgerSink, judge_options
from charter.pipelines.runner import Batches
from charter.pipelines.spec import BestOfNSpec
from charter.review.types import Route, key
from charter.trainer.scoring import RewardScorer

FINISH_NAMES = convert.enum_names(sampling_pb2.FinishReason, "FINISH_REASON_")


@dataclass
class Summary(runner.Summary):
    item_noun = "prompts"
    status_noun = "prompt"
    samples: int = 0
    empty_samples: int = 0
    duplicate_samples: int = 0
    comparisons: int = 0
    unscored_comparisons: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    scoring_seconds: float = 0.0
    sft_rows: int = 0
    preferences: int = 0
    """Rows in the datasets (all runs)."""
    ledger: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ledger": dict(self.ledger),
            **super().as_dict(),
            "samples": self.samples,
            "empty_samples": self.empty_samples,
            "duplicate_samples": self.duplicate_samples,
            "comparisons": self.comparisons,
            "unscored_comparisons": self.unscored_comparisons,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "scoring_seconds": round(self.scoring_seconds, 2),
            "sft_rows": self.sft_rows,
            "preference_rows": self.preferences,
        }


# ---- the pipeline ----------------------------------------------------------------------------------
@dataclass
class Batch:
    """One batch's samples: texts and replies by prompt position, and each prompt's candidates."""

    rows: list[PromptRow]
    replies: dict[int, dict[int, generator_pb2.GenerateResponse]]
    stands_for: list[dict[int, int]]
    scores: list[dict[int, float]] = field(default_factory=list)
    comparisons: list[list[dict[str, Any]]] = field(default_factory=list)
    labels: list[dict[tuple[int, int], label_pb2.PreferenceLabel]] = field(default_factory=list)

    def text(self, p: int, s: int) -> str:
        return self.replies[p][s].completion.text


class BestOfN:
    """Best-of-N's steps for `pipelines.runner`: sample, score, write a record a prompt."""

    def __init__(
        self,
        spec: BestOfNSpec,
        settings: CharterSettings,
        prompts: list[PromptRow | RowError],
        reward_model: RewardScorer | None,
        reward_model_digest: str = "",
    ) -> None:
        self.spec, self.settings, self.prompts, self.reward_model = spec, settings, prompts, reward_model
        self.spec_digest = spec.digest()
        self.summary = Summary()
        self.sampling = convert.sampling_proto(spec.generation.sampling(n=spec.n, seed=spec.seed))
        self.scorer_provenance: dict[str, Any] = {"kind": "judge", "tournament": "round-robin"}
        self.options: judge_pb2.JudgeOptions | None = None
        if reward_model is not None:
            assert spec.scorer.reward_model is not None
            self.scorer_provenance = {
                "kind": "reward_model",
                "reward_model": str(spec.scorer.reward_model.expanduser().resolve()),
                "reward_model_digest": reward_model_digest,
            }
        else:
            assert spec.scorer.judge is not None  # exactly one scorer (ScorerSpec)
            self.options = judge_options(spec.scorer.judge.constitution, spec.scorer.judge, spec.seed)
        self.generator: GeneratorClient | None = None
        self.judge: JudgeClient | None = None
        self.ledger: LedgerSink | None = None

    # ---- the runner's hooks ----------------------------------------------------------------------
    def collect(self) -> list[PromptRow | RowError]:
        return self.prompts

    def local_services(self) -> tuple[str, ...]:
        return ("generator",) if self.options is None else ("generator", "judge")

    def connect(self, address: str | None) -> None:
        s = self.spec.services
        generator = address or s.generator
        judge = (address or s.judge) if self.options is not None else None
        if not generator or (self.options is not None and not judge):
            need = "a generator address" if self.options is None else "generator and judge addresses"
            raise InvalidArgument(f"services: remote mode needs {need}")
        self.generator = GeneratorClient(generator, **s.client_options())
        if judge:
            self.judge = JudgeClient(judge, **s.client_options())
        if self.spec.ledger is not None:
            self.ledger = LedgerSink(self.spec, self.settings)

    async def close(self) -> None:
        for client in (self.generator, self.judge):
            if client is not None:
                await client.close()
        if self.ledger is not None:
            await self.ledger.close()

    def finalise(self, store: OutputStore) -> None:
        _, self.summary.sft_rows, self.summary.preferences = outputs.write_best_of_n(
            store, source=self.spec.source.path, constitutions=self.settings.constitutions.directory
        )

    async def run_batch(self, rows: list[PromptRow], batches: Batches) -> None:
        await batches.split_on_item_errors(rows, lambda part: self._batch(part, batches))

    # ---- one batch -------------------------------------------------------------------------------
    async def _batch(self, rows: list[PromptRow], batches: Batches) -> None:
        """Sample, score and write a batch."""
        assert self.generator is not None
        started = convert.now().ToJsonString()
        request = generator_pb2.GenerateRequest(
            prompts=[convert.conversation_proto(r.messages, r.key) for r in rows],
            sampling=self.sampling,
            item_traceparents=tracing.item_traceparents(r.key for r in rows),
        )
        replies: dict[int, dict[int, generator_pb2.GenerateResponse]] = {}
        for reply in await self.generator.generate(request):
            replies.setdefault(reply.prompt_index, {})[reply.sample_index] = reply
        batch = Batch(rows, replies, [])
        batch.stands_for = [
            candidates([batch.text(p, s) for s in range(self.spec.n)]) for p in range(len(rows))
        ]
        t0 = time.perf_counter()
        if self.reward_model is not None:
            await self._score_with_reward_model(batch)
        else:
            await self._score_with_judge(batch)
        self.summary.scoring_seconds += time.perf_counter() - t0
        chosen = [select(scores) for scores in batch.scores]
        pair_labels = [self._pair_label(batch, p, best, worst) for p, (_, best, worst) in enumerate(chosen)]
        if self.ledger is not None:  # before the records: a resumed run re-submits (a no-op), never skips
            submitted = [(rows[p].key, label) for p, label in enumerate(pair_labels) if label is not None]
            if submitted:
                keys, labels = zip(*submitted, strict=True)
                for result in await self.ledger.submit(list(labels), keys):
                    self.summary.ledger["duplicate" if result.duplicate else key(Route(result.route))] += 1
        for p in range(len(rows)):
            self._write(batch, p, chosen[p], pair_labels[p], started, batches)

    async def _score_with_reward_model(self, batch: Batch) -> None:
        assert self.reward_model is not None
        todo = [(p, s) for p, stands in enumerate(batch.stands_for) for s in sorted(set(stands.values()))]
        conversations = [[m.model_dump() for m in batch.rows[p].messages] for p, _ in todo]
        texts = [batch.text(p, s) for p, s in todo]
        values = await asyncio.to_thread(self.reward_model.score, conversations, texts) if todo else []
        batch.scores = [{} for _ in batch.rows]
        for (p, s), value in zip(todo, values, strict=True):
            batch.scores[p][s] = value
        batch.comparisons = [[] for _ in batch.rows]
        batch.labels = [{} for _ in batch.rows]

    async def _score_with_judge(self, batch: Batch) -> None:
        """Every pair of each prompt's candidates, in one CompareStream call."""
        assert self.judge is not None and self.options is not None
        games: list[tuple[int, int, int]] = []
        for p, stands in enumerate(batch.stands_for):
            pool = sorted(set(stands.values()))
            games += [(p, a, b) for i, a in enumerate(pool) for b in pool[i + 1 :]]
        pairs = [
            PairRow(
                batch.rows[p].index, f"{batch.rows[p].key}:{a}:{b}", batch.rows[p].messages,
                batch.text(p, a), batch.text(p, b),
            )
            for p, a, b in games
        ]  # fmt: skip
        request_id = f"{self.spec.name}:{batch.rows[0].key}"
        traceparents = tracing.item_traceparents(batch.rows[p].key for p, _, _ in games)
        labels = await self.judge.compare(pairs, self.options, request_id, traceparents) if pairs else {}
        batch.comparisons = [[] for _ in batch.rows]
        batch.labels = [{} for _ in batch.rows]
        for g, (p, a, b) in enumerate(games):
            label = labels[g]
            status = STATUS_NAMES[label.status]
            batch.labels[p][(a, b)] = label
            batch.comparisons[p].append(
                {"a": a, "b": b, "p_a": label.p_a, "status": status, "label_id": label.id,
                 "swap_consistent": label.swap_consistent, "principle_ids": list(label.principle_ids)}
            )  # fmt: skip
            self.summary.comparisons += 1
            self.summary.unscored_comparisons += int(status not in SCORED)
        batch.scores = [
            tournament_scores(sorted(set(stands.values())), batch.comparisons[p])
            for p, stands in enumerate(batch.stands_for)
        ]

    def _pair_label(
        self, batch: Batch, p: int, best: int | None, worst: int | None
    ) -> label_pb2.PreferenceLabel | None:
        """The judge's own label of the best-vs-worst pair (judge scorer; None without a pair)."""
        if best is None or worst is None or not batch.labels:
            return None
        return batch.labels[p].get((min(best, worst), max(best, worst)))

    def _write(
        self,
        batch: Batch,
        p: int,
        chosen: tuple[str, int | None, int | None],
        pair_label: label_pb2.PreferenceLabel | None,
        started: str,
        batches: Batches,
    ) -> None:
        row, replies, stands, scores = batch.rows[p], batch.replies[p], batch.stands_for[p], batch.scores[p]
        status, best, worst = chosen
        comparisons = batch.comparisons[p]
        if comparisons and all(c["status"] not in SCORED for c in comparisons):
            status, best, worst = "unscored", None, None  # the judge could not tell any two apart
        p_chosen: float | None = None
        if status == "ok" and best is not None and worst is not None:
            if pair_label is None:  # a reward model: its scores are logits
                p_chosen = sigmoid(scores[best] - scores[worst])
            else:  # the judge: its own label of the pair
                p_a = pair_label.p_a if STATUS_NAMES[pair_label.status] in SCORED else 0.5
                p_chosen = p_a if best < worst else 1.0 - p_a
                if p_chosen <= 0.5:  # the tournament's winner did not beat its loser head to head
                    status = "inconsistent"
        samples: list[dict[str, Any]] = []
        for s in range(self.spec.n):
            completion = replies[s].completion
            original = stands.get(s)
            samples.append(
                {
                    "sample_index": s,
                    "response": completion.text,
                    "finish_reason": FINISH_NAMES.get(completion.finish_reason, "unknown"),
                    "completion_tokens": completion.completion_tokens,
                    "status": "empty" if original is None else ("ok" if original == s else "duplicate"),
                    "duplicate_of": original if original not in (None, s) else None,
                    "score": None if original is None else scores.get(original),
                }
            )
        record = {
            "key": row.key,
            "source_index": row.index,
            "prompt": [m.model_dump() for m in row.messages],
            "samples": samples,
            "status": status,
            "chosen_index": best,
            "worst_index": worst,
            "p_chosen": p_chosen if status == "ok" else None,
            "comparisons": comparisons,
            "pair_label": None
            if pair_label is None
            else MessageToDict(
                pair_label, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            ),
            "provenance": {
                "pipeline": "best-of-n",
                "spec_name": self.spec.name,
                "spec_digest": self.spec_digest,
                "model": MessageToDict(replies[0].model, preserving_proto_field_name=True),
                "scorer": self._scorer_provenance(batch.labels[p]),
                "generation_sampling": self.spec.generation.model_dump(),
                "n": self.spec.n,
                "seed": self.spec.seed,
                "started_at": started,
                "completed_at": convert.now().ToJsonString(),
                "charter_version": __version__,
                **runner.provenance_trace(row.key),  # the item's trace id, while tracing is on
            },
        }
        batches.store.add_record(record)
        summary = self.summary
        summary.statuses[status] += 1
        summary.samples += len(samples)
        summary.empty_samples += sum(s["status"] == "empty" for s in samples)
        summary.duplicate_samples += sum(s["status"] == "duplicate" for s in samples)
        summary.prompt_tokens += replies[0].completion.prompt_tokens
        summary.completion_tokens += sum(s["completion_tokens"] for s in samples)
        batches.written(1)

    def _scorer_provenance(
        self, labels: Mapping[tuple[int, int], label_pb2.PreferenceLabel]
    ) -> dict[str, Any]:
        if self.options is None:
            return self.scorer_provenance
        label = next(iter(labels.values()), None)
        return {
            **self.scorer_provenance,
            "judge": None if label is None else MessageToDict(label.judge, preserving_proto_field_name=True),
            "constitution": None
            if label is None
            else MessageToDict(label.constitution, preserving_proto_field_name=True),
            "judge_options": MessageToDict(self.options, preserving_proto_field_name=True),
        }


# ---- checks before anything is written ------------------------------------------------------------
def read_prompts(spec: BestOfNSpec) -> list[PromptRow | RowError]:
    """The source's rows; a source without a single usable prompt is refused (nothing to sample)."""
    source = spec.source
    items = list(read_rows(source.path, source.format, source.limit))
    if not any(isinstance(item, PromptRow) for item in items):
        bad = [item for item in items if isinstance(item, RowError)]
        detail = f"; {len(bad)} bad rows, the first: {bad[0].reason}" if bad else ""
        raise InvalidArgument(
            f"source.path: {source.path} holds no prompts{detail}",
            field="source.path",
            value=str(source.path),
        )
    return items


def check_resume(spec: BestOfNSpec, scorer: Mapping[str, Any]) -> None:
    """A folder scored by another reward model (the same path, changed files) is not resumed into."""
    records = spec.output / "records.jsonl"
    if scorer.get("kind") != "reward_model" or not records.exists():
        return
    with records.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        recorded = json.loads(first)["provenance"]["scorer"].get("reward_model_digest")
    except (ValueError, KeyError, TypeError):
        return  # a torn first line: the store cuts it off and the folder starts over
    if recorded != scorer["reward_model_digest"]:
        raise FailedPrecondition(
            f"{spec.output} holds samples scored by a different reward model ({recorded}; "
            f"{spec.scorer.reward_model} is now {scorer['reward_model_digest']}); "
            "choose another output folder or delete this one"
        )


def load_reward_model(folder: Path) -> tuple[RewardScorer, str]:
    """The scorer (loaded without transformers' progress bars: a bad folder is one error line) and
    the folder's digest."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers
    try:
        scorer = RewardScorer(folder)
    finally:
        if shown:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return scorer, folder_digest(folder.expanduser())


async def run(spec: BestOfNSpec, settings: CharterSettings, **hooks: Any) -> Summary:
    """Run (or resume) the pipeline; returns what this run did. `hooks`: `runner.run`'s keywords
    (on_start, on_progress, engine). The source and the reward model are checked before the output
    folder is touched."""
    prompts = read_prompts(spec)
    reward_model, digest = None, ""
    if spec.scorer.reward_model is not None:
        reward_model, digest = await asyncio.to_thread(load_reward_model, spec.scorer.reward_model)
    try:
        pipeline = BestOfN(spec, settings, prompts, reward_model, digest)
        check_resume(spec, pipeline.scorer_provenance)
        await runner.run(pipeline, settings, **hooks)
    finally:
        if reward_model is not None:
            reward_model.close()
    return pipeline.summary

"""The RL-CAI labelling pipeline: pairs -> the judge service -> soft preference labels -> a TRL
preference dataset (plus a full record per pair).

Pairs come from a file (hh-rlhf, prompt/chosen/rejected or response_a/response_b, an SL-CAI output:
initial vs revision) or from the generator (two sampled responses per prompt). Like SL-CAI it drives
the services over gRPC — started in this process in local mode — and is resumable: a pair (or, for
generated pairs, a prompt) already in `records.jsonl` is never judged again.

With `ensemble` in the spec, both responses of every judged pair are also scored by each reward model of
the ensemble (in this process, off the event loop); the share of members on the minority side of
r(A) - r(B) becomes the label's `ensemble_disagreement` before the label is submitted or recorded, so the
review ledger can route the pairs the ensemble disagrees on to people. The members are loaded once
before the output folder is touched, so a bad folder leaves nothing behind.

With `judge.method: reward_model` a trained reward model labels the pairs instead of the judge service
(`app.reward_judge`: p_a = σ(r(A) − r(B)), in this process, off the event loop) — an RM from an
earlier round labelling the next round's pairs; it is loaded before the output folder is touched too.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from charter_proto.common.v1 import label_pb2
from charter_proto.generator.v1 import generator_pb2
from charter_proto.judge.v1 import judge_pb2
from charter_proto.review.v1 import review_pb2
from google.protobuf.json_format import MessageToDict

from charter import __version__
from charter.api import common as convert
from charter.api import review as review_api
from charter.api.judge import METHODS, STATUS_NAMES
from charter.app import reward_judge as rm_judge
from charter.app.reward_judge import RewardModelJudge
from charter.client.generator import GeneratorClient
from charter.client.judge import JudgeClient
from charter.client.review import ReviewClient
from charter.core import tracing
from charter.core.auth import read_token
from charter.core.errors import CharterError, InvalidArgument
from charter.core.settings import CharterSettings
from charter.datasets.pairs import PairRow, read_pairs
from charter.datasets.records import OutputStore
from charter.datasets.sources import PromptRow, read_rows
from charter.pipelines import outputs, runner
from charter.pipelines.runner import Batches
from charter.pipelines.spec import BestOfNSpec, EnsembleSpec, JudgeSpec, RlCaiSpec
from charter.review.store import Ledger
from charter.review.types import Route, key
from charter.trainer.scoring import RewardEnsemble, disagreement


@dataclass
class Summary(runner.Summary):
    swap_consistent: int = 0
    preferences: int = 0
    """Rows in the preference dataset (all runs)."""
    judge_seconds: float = 0.0
    ledger: Counter[str] = field(default_factory=Counter)
    """Labels submitted to the review ledger this run, by route (and `duplicate`)."""
    ensemble_scored: int = 0
    """Pairs the reward-model ensemble scored this run."""
    ensemble_split: int = 0
    """Of those, pairs on which the members did not all prefer the same response (disagreement > 0)."""
    ensemble_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        labelled = sum(self.statuses.values())
        out = {
            "ledger": dict(self.ledger),
            **super().as_dict(),
            "swap_consistent": self.swap_consistent,
            "preference_rows": self.preferences,
            "judge_seconds": round(self.judge_seconds, 2),
            "labels_per_second": round(labelled / self.judge_seconds, 3) if self.judge_seconds else 0.0,
        }
        if self.ensemble_scored:
            out["ensemble"] = {
                "pairs_scored": self.ensemble_scored,
                "pairs_split": self.ensemble_split,
                "seconds": round(self.ensemble_seconds, 2),
            }
        return out


def judge_options(constitution: str, j: JudgeSpec, seed: int) -> judge_pb2.JudgeOptions:
    """The judge's options from a spec's `judge` section (RL-CAI's, best-of-N's tournament)."""
    options = judge_pb2.JudgeOptions(
        constitution_id=constitution,
        principles_per_label=j.principles_per_label,
        principle_ids=list(j.principle_ids),
        seed=seed,
        chain_of_thought=j.chain_of_thought,
        cot_clamp_low=j.cot_clamp[0],
        cot_clamp_high=j.cot_clamp[1],
    )
    if j.tie_margin is not None:
        options.tie_margin = j.tie_margin
    if j.method is not None:
        options.method = METHODS[j.method]
    if j.contrastive_beta is not None:
        options.contrastive_beta = j.contrastive_beta
    if j.logit_scale is not None:
        options.logit_scale = j.logit_scale
    return options


class LedgerSink:
    """Submits labels to the review ledger: a database in this process, or a review service."""

    def __init__(self, spec: RlCaiSpec | BestOfNSpec, settings: CharterSettings) -> None:
        assert spec.ledger is not None
        self.spec, self.target = spec, spec.ledger
        self._ledger: Ledger | None = None
        self._client: ReviewClient | None = None
        if self.target.database is not None:
            r = settings.review
            self._ledger = Ledger(self.target.database, r.routing, max_label_bytes=r.max_label_bytes)
        else:
            assert self.target.address is not None and self.target.token_file is not None
            options = spec.services.client_options()
            options["token"] = read_token(self.target.token_file, "ledger.token_file")
            self._client = ReviewClient(self.target.address, **options)

    async def submit(
        self, labels: list[label_pb2.PreferenceLabel], keys: Sequence[str]
    ) -> list[review_pb2.SubmitResult]:
        """Append `labels` (of the items `keys`, whose traces the call joins) to the ledger."""
        if self._ledger is not None:
            return await asyncio.to_thread(self._submit_here, self._ledger, labels)
        assert self._client is not None
        request_id = f"{self.spec.name}:{labels[0].id}"
        return await self._client.submit(labels, request_id, tracing.item_traceparents(keys))

    @staticmethod
    def _submit_here(
        ledger: Ledger, labels: list[label_pb2.PreferenceLabel]
    ) -> list[review_pb2.SubmitResult]:
        return [review_api.submit_result_proto(r) for r in ledger.submit(review_api.submissions(labels))]

    async def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        if self._client is not None:
            await self._client.close()


class RlCai:
    """RL-CAI's steps for `pipelines.runner`: (generate two responses a prompt,) judge, write a record
    a pair, submit the labels to the review ledger when the spec names one."""

    def __init__(
        self,
        spec: RlCaiSpec,
        settings: CharterSettings,
        ensemble: RewardEnsemble | None = None,
        reward_judge: RewardModelJudge | None = None,
    ) -> None:
        self.spec, self.settings = spec, settings
        self.ensemble = ensemble
        self.reward_judge = reward_judge
        """Labels the pairs instead of the judge service (`judge.method: reward_model`)."""
        """Scores every judged pair (`spec.ensemble`, checked by `load_ensemble`); None: not measured."""
        self.spec_digest = spec.digest()
        self.summary = Summary()
        self.generated = spec.pairs.kind == "generator"
        self.options = judge_options(spec.constitution, spec.judge, spec.seed)
        self.judge: JudgeClient | None = None
        self.generator: GeneratorClient | None = None
        self.ledger: LedgerSink | None = None

    # ---- the runner's hooks ----------------------------------------------------------------------
    def collect(self) -> Any:
        source = self.spec.pairs
        if self.generated:
            if source.format == "sl-cai":
                raise InvalidArgument(
                    "pairs.format: sl-cai is a pair source; use kind: file", field="pairs.format"
                )
            return read_rows(source.path, source.format, source.limit)
        if source.format == "csv":
            raise InvalidArgument("pairs.format: csv holds prompts, not pairs", field="pairs.format")
        return read_pairs(source.path, source.format, source.limit, seed=self.spec.seed)

    def local_services(self) -> tuple[str, ...]:
        judge = () if self.reward_judge is not None else ("judge",)
        return ("generator", *judge) if self.generated else judge

    def connect(self, address: str | None) -> None:
        s = self.spec.services
        judge = None if self.reward_judge is not None else (address or s.judge)
        generator = (address or s.generator) if self.generated else None
        if (not judge and self.reward_judge is None) or (self.generated and not generator):
            need = "a generator address" if self.reward_judge is not None else "a judge address"
            need = "judge and generator addresses" if self.generated and self.reward_judge is None else need
            raise InvalidArgument(f"services: remote mode needs {need}")
        if judge:
            self.judge = JudgeClient(judge, **s.client_options())
        if generator:
            self.generator = GeneratorClient(generator, **s.client_options())
        if self.spec.ledger is not None:
            self.ledger = LedgerSink(self.spec, self.settings)

    async def close(self) -> None:
        for client in (self.judge, self.generator):
            if client is not None:
                await client.close()
        if self.ledger is not None:
            await self.ledger.close()
        if self.ensemble is not None:
            self.ensemble.close()
        if self.reward_judge is not None:
            self.reward_judge.close()

    def finalise(self, store: OutputStore) -> None:
        _, self.summary.preferences = outputs.write_preferences(
            store, source=self.spec.pairs.path, constitutions=self.settings.constitutions.directory
        )

    async def run_batch(self, items: list[Any], batches: Batches) -> None:
        pairs = await self.generate_pairs(items, batches) if self.generated else items
        if pairs:
            await batches.split_on_item_errors(pairs, lambda part: self._judge_batch(part, batches))

    # ---- steps -----------------------------------------------------------------------------------
    async def generate_pairs(self, rows: Sequence[PromptRow], batches: Batches) -> list[PairRow]:
        """Two sampled responses per prompt; a prompt whose samples are empty or identical is a row
        error (nothing to compare). The pair's key is the prompt's, so a resumed run skips it."""
        assert self.generator is not None
        sampling = convert.sampling_proto(self.spec.generation.sampling(n=2, seed=self.spec.seed))
        request = generator_pb2.GenerateRequest(
            prompts=[convert.conversation_proto(r.messages, r.key) for r in rows],
            sampling=sampling,
            item_traceparents=tracing.item_traceparents(r.key for r in rows),
        )
        replies = await self.generator.generate(request)
        texts: dict[int, dict[int, str]] = {}
        models: dict[int, Any] = {}
        for reply in replies:
            texts.setdefault(reply.prompt_index, {})[reply.sample_index] = reply.completion.text
            models[reply.prompt_index] = MessageToDict(reply.model, preserving_proto_field_name=True)
        pairs = []
        for i, row in enumerate(rows):
            a, b = texts[i][0], texts[i][1]
            if not a.strip() or not b.strip() or a.strip() == b.strip():
                reason = "the two samples are identical" if a.strip() else "a sample came back empty"
                batches.row_error(row.key, row.index, reason)
                continue
            origin = {"source_index": row.index, "generator_model": models[i]}
            pairs.append(PairRow(row.index, row.key, row.messages, a, b, None, origin))
        return pairs

    async def _judge_batch(self, pairs: list[PairRow], batches: Batches) -> None:
        """Judge and write a batch."""
        summary = self.summary
        started = convert.now().ToJsonString()
        t0 = time.perf_counter()
        request_id = f"{self.spec.name}:{pairs[0].key}"
        labels: Sequence[label_pb2.PreferenceLabel] | Mapping[int, label_pb2.PreferenceLabel]
        if self.reward_judge is not None:
            labels = await asyncio.to_thread(self.reward_judge.label, pairs, request_id)
        else:
            assert self.judge is not None
            traceparents = tracing.item_traceparents(p.key for p in pairs)
            labels = await self.judge.compare(pairs, self.options, request_id, traceparents)
        summary.judge_seconds += time.perf_counter() - t0
        margins: list[list[float]] | None = None
        if self.ensemble is not None:  # on the labels before they are submitted or recorded
            t0 = time.perf_counter()
            margins = await asyncio.to_thread(ensemble_margins, self.ensemble, pairs)
            summary.ensemble_seconds += time.perf_counter() - t0
            for i, pair_margins in enumerate(margins):
                labels[i].ensemble_disagreement = disagreement(pair_margins)
                summary.ensemble_scored += 1
                summary.ensemble_split += int(labels[i].ensemble_disagreement > 0)
        if self.ledger is not None:  # before the records: a resumed run re-submits (a no-op), never skips
            submitted = [labels[i] for i in range(len(pairs))]
            for result in await self.ledger.submit(submitted, [p.key for p in pairs]):
                summary.ledger["duplicate" if result.duplicate else key(Route(result.route))] += 1
        for i, pair in enumerate(pairs):
            self.write(pair, labels[i], started, batches, None if margins is None else margins[i])

    def write(
        self,
        pair: PairRow,
        label: label_pb2.PreferenceLabel,
        started: str,
        batches: Batches,
        margins: list[float] | None = None,
    ) -> None:
        status = STATUS_NAMES[label.status]
        record = {
            "key": pair.key,
            "source_index": pair.index,
            "prompt": [m.model_dump() for m in pair.conversation],
            "response_a": pair.response_a,
            "response_b": pair.response_b,
            "source_preference": pair.human,
            "origin": pair.origin,
            "status": status,
            "label": MessageToDict(
                label, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            ),
            "ensemble": None
            if margins is None
            else {"margins": margins, "disagreement": label.ensemble_disagreement},
            "provenance": {
                "pipeline": "rl-cai",
                "spec_name": self.spec.name,
                "spec_digest": self.spec_digest,
                "constitution": MessageToDict(label.constitution, preserving_proto_field_name=True),
                "judge": MessageToDict(label.judge, preserving_proto_field_name=True),
                "judge_options": MessageToDict(self.options, preserving_proto_field_name=True),
                "ensemble": None if self.ensemble is None else list(self.ensemble.members),
                "started_at": started,
                "completed_at": convert.now().ToJsonString(),
                "charter_version": __version__,
                **runner.provenance_trace(pair.key),  # the item's trace id, while tracing is on
            },
        }
        batches.store.add_record(record)
        self.summary.statuses[status] += 1
        self.summary.swap_consistent += int(label.swap_consistent)
        batches.written(1)


def ensemble_margins(ensemble: RewardEnsemble, pairs: Sequence[PairRow]) -> list[list[float]]:
    """Per pair, every member's margin r(A) - r(B), in member order (one scoring pass per member over
    both responses of every pair)."""
    conversations = [[m.model_dump() for m in pair.conversation] for pair in pairs]
    replies = [pair.response_a for pair in pairs] + [pair.response_b for pair in pairs]
    scores = ensemble.score(conversations * 2, replies)
    n = len(pairs)
    return [[member[i] - member[n + i] for member in scores] for i in range(n)]


def load_ensemble(spec: EnsembleSpec) -> RewardEnsemble:
    """The spec's ensemble, with every member loaded once to check it (without transformers' progress
    bars, so a bad folder is one error line): a folder that is not a reward model, has no chat template,
    or holds a tokenizer its model does not match, a malformed `ensemble.json`, or fewer than two members
    in all are refused before anything is written."""
    from transformers.utils import logging as hf_logging

    field_name = "ensemble.reward_models"
    folders = [str(f) for f in spec.reward_models]
    try:
        ensemble = RewardEnsemble(spec.reward_models)
    except (OSError, ValueError, TypeError, AttributeError) as err:  # an unreadable ensemble.json
        raise InvalidArgument(f"{field_name}: {err}", field=field_name, value=folders) from None
    if len(ensemble.members) < 2:
        raise InvalidArgument(
            f"{field_name}: an ensemble needs at least two reward models ({folders} hold "
            f"{len(ensemble.members)})",
            field=field_name,
            value=folders,
        )
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers
    try:
        ensemble.load()  # kept loaded for the run's batches
    except CharterError as err:
        raise type(err)(f"{field_name}: {err.message}", field=field_name, value=err.value) from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return ensemble


async def load_reward_judge(spec: RlCaiSpec, settings: CharterSettings) -> RewardModelJudge | None:
    """The reward model of `judge.method: reward_model` (a folder or run:ID), loaded and checked."""
    if spec.judge.reward_model is None:
        return None
    return await rm_judge.load(
        spec.judge.reward_model,
        spec.constitution,
        settings,
        field="judge.reward_model",
        tie_margin=spec.judge.tie_margin or 0.0,
    )


async def run(spec: RlCaiSpec, settings: CharterSettings, **hooks: Any) -> Summary:
    """Run (or resume) the pipeline; returns what this run did. `hooks`: `runner.run`'s keywords
    (on_start, on_progress, engine). The ensemble's reward models are checked before the output folder
    is touched."""
    ensemble = None if spec.ensemble is None else await asyncio.to_thread(load_ensemble, spec.ensemble)
    reward_judge = await load_reward_judge(spec, settings)
    pipeline = RlCai(spec, settings, ensemble, reward_judge)
    await runner.run(pipeline, settings, **hooks)
    return pipeline.summary

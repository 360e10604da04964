"""The RL-CAI labelling pipeline: pairs -> the judge service -> soft preference labels -> a TRL
preference dataset (plus a full record per pair).

Pairs come from a file (hh-rlhf, prompt/chosen/rejected or response_a/response_b, an SL-CAI output:
initial vs revision) or from the generator (two sampled responses per prompt). Like SL-CAI it drives
the services over gRPC — started in this process in local mode — and is resumable: a pair (or, for
generated pairs, a prompt) already in `records.jsonl` is never judged again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from charter_proto.common.v1 import label_pb2
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
from charter_proto.review.v1 import review_pb2, review_pb2_grpc
from google.protobuf.json_format import MessageToDict

from charter import __version__
from charter.core import convert
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.core.settings import CharterSettings
from charter.inference.types import InferenceClient
from charter.judge.servicer import STATUS_NAMES
from charter.pipelines import outputs
from charter.pipelines.pairs import PairRow, read_pairs
from charter.pipelines.sl_cai import _PER_ITEM, local_server, record_row_error, select_pending, with_retry
from charter.pipelines.sources import PromptRow, read_rows
from charter.pipelines.spec import RlCaiSpec
from charter.pipelines.store import OutputStore

log = structlog.get_logger("charter.pipeline")

_ROUTES = {
    review_pb2.ROUTE_AUTO_ACCEPTED: "auto_accepted",
    review_pb2.ROUTE_HUMAN_REVIEW: "human_review",
    review_pb2.ROUTE_REJECTED: "rejected",
}


@dataclass
class Summary:
    total: int = 0
    already_done: int = 0
    written: int = 0
    row_errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    swap_consistent: int = 0
    preferences: int = 0
    """Rows in the preference dataset (all runs)."""
    judge_seconds: float = 0.0
    seconds: float = 0.0
    ledger: Counter[str] = field(default_factory=Counter)
    """Labels submitted to the review ledger this run, by route (and `duplicate`)."""

    def as_dict(self) -> dict[str, Any]:
        labelled = sum(self.statuses.values())
        return {
            "ledger": dict(self.ledger),
            "items_total": self.total,
            "already_done": self.already_done,
            "written_this_run": self.written,
            "row_errors_this_run": self.row_errors,
            "label_statuses": dict(self.statuses),
            "swap_consistent": self.swap_consistent,
            "errors_by_reason": dict(self.errors),
            "preference_rows": self.preferences,
            "seconds": round(self.seconds, 2),
            "judge_seconds": round(self.judge_seconds, 2),
            "labels_per_second": round(labelled / self.judge_seconds, 3) if self.judge_seconds else 0.0,
        }


def judge_options(spec: RlCaiSpec) -> judge_pb2.JudgeOptions:
    j = spec.judge
    options = judge_pb2.JudgeOptions(
        constitution_id=spec.constitution,
        principles_per_label=j.principles_per_label,
        principle_ids=list(j.principle_ids),
        seed=spec.seed,
        chain_of_thought=j.chain_of_thought,
        cot_clamp_low=j.cot_clamp[0],
        cot_clamp_high=j.cot_clamp[1],
    )
    if j.tie_margin is not None:
        options.tie_margin = j.tie_margin
    return options


def compare_request(
    pairs: Sequence[PairRow], options: judge_pb2.JudgeOptions, request_id: str
) -> judge_pb2.CompareStreamRequest:
    """One `CompareStream` call for `pairs`; each conversation carries the pair's key as its id."""
    return judge_pb2.CompareStreamRequest(
        items=[
            judge_pb2.ComparisonItem(
                conversation=convert.conversation_proto(p.conversation, p.key),
                response_a=p.response_a,
                response_b=p.response_b,
            )
            for p in pairs
        ],
        options=options,
        request_id=request_id,
    )


class LedgerSink:
    """Submits labels to the review ledger: a database in this process, or a review service."""

    def __init__(self, spec: RlCaiSpec, settings: CharterSettings) -> None:
        assert spec.ledger is not None
        self.spec, self.target = spec, spec.ledger
        self._ledger: Any = None
        self._stub: Any = None
        if self.target.database is not None:
            from charter.review.store import Ledger

            r = settings.review
            self._ledger = Ledger(self.target.database, r.routing, max_label_bytes=r.max_label_bytes)
        else:
            assert self.target.address is not None and self.target.token_file is not None
            try:
                token = self.target.token_file.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise InvalidArgument(
                    f"ledger.token_file: cannot read {self.target.token_file}: {err.strerror}"
                ) from None
            self._metadata = (("authorization", f"Bearer {token}"),)
            self._stub = review_pb2_grpc.ReviewServiceStub(grpc.aio.insecure_channel(self.target.address))

    async def submit(self, labels: list[label_pb2.PreferenceLabel]) -> list[review_pb2.SubmitResult]:
        if self._ledger is not None:
            return await asyncio.to_thread(self._ledger.submit, labels)
        request = review_pb2.SubmitRequest(labels=labels, request_id=f"{self.spec.name}:{labels[0].id}")

        async def call() -> list[review_pb2.SubmitResult]:
            reply = await self._stub.Submit(
                request, metadata=self._metadata, timeout=self.spec.services.timeout_seconds
            )
            return list(reply.results)

        return await with_retry(self.spec, "the review service", self.target.address or "", call)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()


class RlCaiRun:
    def __init__(
        self,
        spec: RlCaiSpec,
        judge: str,
        generator: str | None,
        on_progress: Callable[[int], None],
        ledger: LedgerSink | None = None,
    ) -> None:
        self.ledger = ledger
        self.spec = spec
        self.spec_digest = spec.digest()
        self.judge_address, self.generator_address = judge, generator
        self.on_progress = on_progress
        self.judge = judge_pb2_grpc.JudgeServiceStub(grpc.aio.insecure_channel(judge))
        self.generator = (
            generator_pb2_grpc.GeneratorServiceStub(grpc.aio.insecure_channel(generator))
            if generator
            else None
        )
        self.options = judge_options(spec)

    async def compare(self, pairs: Sequence[PairRow]) -> dict[int, label_pb2.PreferenceLabel]:
        request = compare_request(pairs, self.options, f"{self.spec.name}:{pairs[0].key}")

        async def call() -> dict[int, label_pb2.PreferenceLabel]:
            stream = self.judge.CompareStream(request, timeout=self.spec.services.timeout_seconds)
            return {reply.item_index: reply.label async for reply in stream}

        return await with_retry(self.spec, "the judge", self.judge_address, call)

    async def generate_pairs(
        self, rows: Sequence[PromptRow], store: OutputStore, summary: Summary
    ) -> list[PairRow]:
        """Two sampled responses per prompt; a prompt whose samples are empty or identical is a row
        error (nothing to compare). The pair's key is the prompt's, so a resumed run skips it."""
        assert self.generator is not None and self.generator_address is not None
        sampling = convert.sampling_proto(self.spec.generation.sampling(n=2, seed=self.spec.seed))
        request = generator_pb2.GenerateRequest(
            prompts=[convert.conversation_proto(r.messages, r.key) for r in rows], sampling=sampling
        )

        async def call() -> list[generator_pb2.GenerateResponse]:
            stream = self.generator.Generate(request, timeout=self.spec.services.timeout_seconds)  # type: ignore[union-attr]
            return [reply async for reply in stream]

        replies = await with_retry(self.spec, "the generator", self.generator_address, call)
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
                self.row_error(row.key, row.index, reason, store, summary)
                continue
            origin = {"source_index": row.index, "generator_model": models[i]}
            pairs.append(PairRow(row.index, row.key, row.messages, a, b, None, origin))
        return pairs

    async def run_batch(self, pairs: list[PairRow], store: OutputStore, summary: Summary) -> None:
        """Judge and write a batch; a batch rejected as a caller error is split so that only the bad
        pairs become error records."""
        started = convert.now().ToJsonString()
        t0 = time.perf_counter()
        try:
            labels = await self.compare(pairs)
        except grpc.aio.AioRpcError as err:
            if err.code() not in _PER_ITEM:
                raise
            if len(pairs) == 1:
                self.row_error(
                    pairs[0].key, pairs[0].index, f"{err.code().name}: {err.details()}", store, summary
                )
                return
            for pair in pairs:
                await self.run_batch([pair], store, summary)
            return
        summary.judge_seconds += time.perf_counter() - t0
        if self.ledger is not None:  # before the records: a resumed run re-submits (a no-op), never skips
            for result in await self.ledger.submit([labels[i] for i in range(len(pairs))]):
                summary.ledger["duplicate" if result.duplicate else _ROUTES[result.route]] += 1
        for i, pair in enumerate(pairs):
            self.write(pair, labels[i], started, store, summary)

    def write(
        self,
        pair: PairRow,
        label: label_pb2.PreferenceLabel,
        started: str,
        store: OutputStore,
        summary: Summary,
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
            "provenance": {
                "pipeline": "rl-cai",
                "spec_name": self.spec.name,
                "spec_digest": self.spec_digest,
                "constitution": MessageToDict(label.constitution, preserving_proto_field_name=True),
                "judge": MessageToDict(label.judge, preserving_proto_field_name=True),
                "judge_options": MessageToDict(self.options, preserving_proto_field_name=True),
                "started_at": started,
                "completed_at": convert.now().ToJsonString(),
                "charter_version": __version__,
            },
        }
        store.add_record(record)
        summary.written += 1
        summary.statuses[status] += 1
        summary.swap_consistent += int(label.swap_consistent)
        self.on_progress(1)

    def row_error(self, key: str, index: int, reason: str, store: OutputStore, summary: Summary) -> None:
        record_row_error(store, summary, key, index, reason)
        self.on_progress(1)


def _collect(spec: RlCaiSpec, store: OutputStore, summary: Summary) -> list[Any]:
    source = spec.pairs
    items: Any
    if source.kind == "generator":
        if source.format == "sl-cai":
            raise InvalidArgument(
                "pairs.format: sl-cai is a pair source; use kind: file", field="pairs.format"
            )
        items = read_rows(source.path, source.format, source.limit)  # type: ignore[arg-type]
    else:
        if source.format == "csv":
            raise InvalidArgument("pairs.format: csv holds prompts, not pairs", field="pairs.format")
        items = read_pairs(source.path, source.format, source.limit, seed=spec.seed)  # type: ignore[arg-type]
    return select_pending(items, store, summary)


async def run(
    spec: RlCaiSpec,
    settings: CharterSettings,
    *,
    on_start: Callable[[int, int], None] = lambda total, done: None,
    on_progress: Callable[[int], None] = lambda n: None,
    engine: InferenceClient | None = None,
) -> Summary:
    """Run (or resume) the pipeline; returns what this run did."""
    started = time.perf_counter()
    store = OutputStore(spec.output, spec.digest())
    summary = Summary()
    pending = _collect(spec, store, summary)
    on_start(summary.total, summary.already_done)
    generated = spec.pairs.kind == "generator"
    if pending:
        if spec.services.mode == "local":
            names = ("generator", "judge") if generated else ("judge",)
            context: Any = local_server(settings, names, engine)
        else:
            if not spec.services.judge or (generated and not spec.services.generator):
                need = "judge and generator addresses" if generated else "a judge address"
                raise InvalidArgument(f"services: remote mode needs {need}")
            context = contextlib.nullcontext(None)
        async with context as address:
            judge = address or spec.services.judge
            generator = (address or spec.services.generator) if generated else None
            sink = LedgerSink(spec, settings) if spec.ledger is not None else None
            runner = RlCaiRun(spec, judge, generator, on_progress, sink)
            try:
                for start in range(0, len(pending), spec.batch_size):
                    batch = pending[start : start + spec.batch_size]
                    if generated:
                        batch = await runner.generate_pairs(batch, store, summary)
                    if batch:
                        await runner.run_batch(batch, store, summary)
            except grpc.aio.AioRpcError as err:  # a mistake no retry fixes, e.g. an unknown constitution
                error = NotFound if err.code() is grpc.StatusCode.NOT_FOUND else FailedPrecondition
                raise error(f"{err.code().name}: {err.details()}") from None
            finally:
                if sink is not None:
                    sink.close()
    summary.seconds = time.perf_counter() - started
    _, summary.preferences = outputs.write_preferences(store)
    return summary

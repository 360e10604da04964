"""The SL-CAI pipeline: prompts -> initial responses (generator) -> critique/revision rounds
(critic-reviser) -> a TRL-ready SFT dataset plus a full record per prompt.

It drives the services over gRPC like any external client: in local mode it first starts them
in this process on a free localhost port (one engine shared by both); in remote mode it uses the
addresses it is given. Resumable: finished prompts are skipped on the next run (see `store`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import structlog
from charter_proto.common.v1 import critique_pb2, sampling_pb2
from charter_proto.critic.v1 import critic_pb2, critic_pb2_grpc
from charter_proto.generator.v1 import generator_pb2, generator_pb2_grpc
from google.protobuf.json_format import MessageToDict

from charter import __version__
from charter.core import convert
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from charter.core.settings import CharterSettings, ServerSettings
from charter.inference.types import InferenceClient
from charter.pipelines import outputs
from charter.pipelines.sources import PromptRow, RowError, read_rows
from charter.pipelines.spec import SlCaiSpec
from charter.pipelines.store import OutputStore

log = structlog.get_logger("charter.pipeline")
T = TypeVar("T")

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_PER_ITEM = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}
_FINISH = {sampling_pb2.FINISH_REASON_STOP: "stop", sampling_pb2.FINISH_REASON_LENGTH: "length"}


class PipelineStopped(Unavailable):
    """A service stayed unreachable; what is written is kept and the next run resumes."""


@dataclass
class Summary:
    total: int = 0
    already_done: int = 0
    written: int = 0
    row_errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts_total": self.total,
            "already_done": self.already_done,
            "written_this_run": self.written,
            "row_errors_this_run": self.row_errors,
            "sample_statuses": dict(self.statuses),
            "errors_by_reason": dict(self.errors),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 2),
            "prompts_per_second": round(self.written / self.seconds, 3) if self.seconds else 0.0,
        }


@contextlib.asynccontextmanager
async def local_server(
    settings: CharterSettings, names: Sequence[str], engine: InferenceClient | None = None
) -> AsyncIterator[str]:
    """The named services in this process, one engine shared, on a free localhost port; yields the
    address. `engine`: an already loaded engine to use (and not close) instead of building one."""
    from charter.core.catalog import SERVICES, Resources
    from charter.core.server import CharterServer

    resources = Resources(settings, engine=engine)
    try:
        registrations = [SERVICES[n].registration_for(resources) for n in names]
        server = CharterServer(
            ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=5), registrations
        )
        port = await server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await server.stop(1)
    finally:
        await resources.close()


@contextlib.asynccontextmanager
async def local_services(
    settings: CharterSettings, engine: InferenceClient | None = None
) -> AsyncIterator[tuple[str, str]]:
    """Generator and critic-reviser in this process: (generator address, critic-reviser address)."""
    async with local_server(settings, ("generator", "critic-reviser"), engine) as address:
        yield address, address


async def with_retry(spec: Any, what: str, address: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call`, retried with exponential backoff while the service is unreachable (`spec.services`)."""
    attempts = spec.services.retries + 1
    for attempt in range(attempts):
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() not in _TRANSIENT:
                raise
            if attempt == attempts - 1:
                raise PipelineStopped(
                    f"{what} at {address} is unavailable after {attempts} attempts ({err.code().name}: "
                    f"{err.details()}); the output so far is kept — run the same command again to resume"
                ) from None
            delay = spec.services.backoff_seconds * 2**attempt
            log.warning("pipeline.retry", service=what, address=address, attempt=attempt + 1, delay_s=delay,
                        code=err.code().name)  # fmt: skip
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class SlCaiRun:
    def __init__(
        self, spec: SlCaiSpec, generator: str, critic: str, on_progress: Callable[[int], None]
    ) -> None:
        self.spec = spec
        self.spec_digest = spec.digest()
        self.generator_address, self.critic_address = generator, critic
        self.on_progress = on_progress
        self.generator = generator_pb2_grpc.GeneratorServiceStub(grpc.aio.insecure_channel(generator))
        self.critic = critic_pb2_grpc.CriticReviserServiceStub(grpc.aio.insecure_channel(critic))
        self.gen_sampling = convert.sampling_proto(spec.generation.sampling(n=spec.samples, seed=spec.seed))
        self.crit_options = critic_pb2.CritiqueOptions(
            constitution_id=spec.constitution,
            rounds=spec.rounds or 0,
            sampling=convert.sampling_proto(spec.critique.sampling(seed=spec.seed)),
            seed=spec.seed,
        )

    # ---- calls ---------------------------------------------------------------------------------
    async def _generate(self, rows: Sequence[PromptRow]) -> list[generator_pb2.GenerateResponse]:
        request = generator_pb2.GenerateRequest(
            prompts=[convert.conversation_proto(r.messages, r.key) for r in rows], sampling=self.gen_sampling
        )

        async def call() -> list[generator_pb2.GenerateResponse]:
            stream = self.generator.Generate(request, timeout=self.spec.services.timeout_seconds)
            return [reply async for reply in stream]

        return await with_retry(self.spec, "the generator", self.generator_address, call)

    async def _critique(
        self, items: Sequence[critic_pb2.CritiqueItem]
    ) -> dict[int, critic_pb2.CritiqueResult]:
        request = critic_pb2.CritiqueReviseStreamRequest(items=list(items), options=self.crit_options)

        async def call() -> dict[int, critic_pb2.CritiqueResult]:
            stream = self.critic.CritiqueReviseStream(request, timeout=self.spec.services.timeout_seconds)
            return {reply.item_index: reply.result async for reply in stream}

        return await with_retry(self.spec, "the critic-reviser", self.critic_address, call)

    # ---- one batch -------------------------------------------------------------------------------
    async def run_batch(self, rows: list[PromptRow], store: OutputStore, summary: Summary) -> None:
        """Generate, critique and write a batch. A batch the services reject as a caller error (one
        prompt too long, …) is split up so that only the bad prompts become error records."""
        started = convert.now().ToJsonString()
        try:
            replies = await self._generate(rows)
            by_prompt: dict[int, dict[int, generator_pb2.GenerateResponse]] = {}
            for reply in replies:
                by_prompt.setdefault(reply.prompt_index, {})[reply.sample_index] = reply
            pairs = [(p, s) for p in range(len(rows)) for s in range(self.spec.samples)]
            todo = [i for i, (p, s) in enumerate(pairs) if by_prompt[p][s].completion.text.strip()]
            items = [
                critic_pb2.CritiqueItem(
                    conversation=convert.conversation_proto(
                        rows[pairs[i][0]].messages, f"{rows[pairs[i][0]].key}:{pairs[i][1]}"
                    ),
                    response=by_prompt[pairs[i][0]][pairs[i][1]].completion.text,
                )
                for i in todo
            ]
            got = await self._critique(items) if items else {}
        except grpc.aio.AioRpcError as err:
            if err.code() not in _PER_ITEM:
                raise
            if len(rows) == 1:
                self._row_error(rows[0], f"{err.code().name}: {err.details()}", store, summary)
                return
            for row in rows:
                await self.run_batch([row], store, summary)
            return
        results = {todo[k]: v for k, v in got.items()}
        for p, row in enumerate(rows):
            samples = [
                self._sample_record(s, by_prompt[p][s], results.get(p * self.spec.samples + s))
                for s in range(self.spec.samples)
            ]
            self._write(row, samples, started, store, summary)

    def _sample_record(
        self, s: int, reply: generator_pb2.GenerateResponse, result: critic_pb2.CritiqueResult | None
    ) -> dict[str, Any]:
        completion = reply.completion
        record: dict[str, Any] = {
            "sample_index": s,
            "initial_response": completion.text,
            "initial_finish_reason": _FINISH.get(completion.finish_reason, "unknown"),
            "initial_prompt_tokens": completion.prompt_tokens,
            "initial_completion_tokens": completion.completion_tokens,
            "model": MessageToDict(reply.model, preserving_proto_field_name=True),
        }
        if result is None:  # nothing to revise: the initial response came back empty
            record.update(rounds=[], final_revision="", status="empty_response", critique_provenance=None)
            return record
        record.update(
            rounds=[
                MessageToDict(r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                for r in result.rounds
            ],
            final_revision=result.final_revision,
            status=critique_status(result.status),
            critique_provenance=MessageToDict(result.provenance, preserving_proto_field_name=True),
        )
        return record

    def _write(
        self,
        row: PromptRow,
        samples: list[dict[str, Any]],
        started: str,
        store: OutputStore,
        summary: Summary,
    ) -> None:
        provenance = next((s["critique_provenance"] for s in samples if s["critique_provenance"]), {}) or {}
        record = {
            "key": row.key,
            "source_index": row.index,
            "prompt": [m.model_dump() for m in row.messages],
            "samples": samples,
            "provenance": {
                "pipeline": "sl-cai",
                "spec_name": self.spec.name,
                "spec_digest": self.spec_digest,
                "constitution": provenance.get("constitution"),
                "principle_ids": sorted(
                    {pid for s in samples for r in s["rounds"] for pid in [r["principle_id"]]}
                ),
                "model": samples[0]["model"],
                "generation_sampling": self.spec.generation.model_dump(),
                "critique_sampling": self.spec.critique.model_dump(),
                "samples": self.spec.samples,
                "seed": self.spec.seed,
                "started_at": started,
                "completed_at": convert.now().ToJsonString(),
                "charter_version": __version__,
            },
        }
        store.add_record(record)
        summary.written += 1
        for s in samples:
            summary.statuses[s["status"]] += 1
            summary.prompt_tokens += s["initial_prompt_tokens"] + sum(
                r.get("prompt_tokens", 0) for r in s["rounds"]
            )
            summary.completion_tokens += s["initial_completion_tokens"] + sum(
                r.get("critique_tokens", 0) + r.get("revision_tokens", 0) for r in s["rounds"]
            )
        self.on_progress(1)

    def _row_error(self, row: PromptRow, reason: str, store: OutputStore, summary: Summary) -> None:
        record_row_error(store, summary, row.key, row.index, reason)
        self.on_progress(1)


def critique_status(status: int) -> str:
    return critique_pb2.StepStatus.Name(status).removeprefix("STEP_STATUS_").lower()


def record_row_error(store: OutputStore, summary: Any, key: str, index: int, reason: str) -> None:
    """An error record for a source row, counted by the reason's prefix (the text before ':')."""
    store.add_error({"key": key, "source_index": index, "reason": reason})
    summary.row_errors += 1
    summary.errors[reason.split(":", 1)[0]] += 1


def select_pending(items: Iterable[Any], store: OutputStore, summary: Any) -> list[Any]:
    """The source items this run still has to do. A bad row becomes an error record (once: not again
    on resume); an item whose key repeats one seen before is the same work and is skipped; an item
    whose key is already in the output folder counts as done. `summary` needs `total`,
    `already_done`, `row_errors` and an `errors` counter."""
    pending: list[Any] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, RowError):
            if item.index not in store.done_rows:
                record_row_error(store, summary, item.key, item.index, f"bad row: {item.reason}")
            continue
        if item.key in seen:
            continue
        seen.add(item.key)
        summary.total += 1
        if item.key in store.done:
            summary.already_done += 1
        else:
            pending.append(item)
    return pending


async def run(
    spec: SlCaiSpec,
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
    pending = select_pending(
        read_rows(spec.source.path, spec.source.format, spec.source.limit), store, summary
    )
    on_start(summary.total, summary.already_done)
    if pending:
        if spec.services.mode == "local":
            context = local_services(settings, engine)
        else:
            if not (spec.services.generator and spec.services.critic_reviser):
                raise InvalidArgument("services: remote mode needs generator and critic_reviser addresses")
            context = contextlib.nullcontext((spec.services.generator, spec.services.critic_reviser))
        async with context as (generator, critic):
            runner = SlCaiRun(spec, generator, critic, on_progress)
            try:
                for start in range(0, len(pending), spec.batch_size):
                    await runner.run_batch(pending[start : start + spec.batch_size], store, summary)
            except grpc.aio.AioRpcError as err:  # a mistake no retry fixes, e.g. an unknown constitution
                error = NotFound if err.code() is grpc.StatusCode.NOT_FOUND else FailedPrecondition
                raise error(f"{err.code().name}: {err.details()}") from None
    summary.seconds = time.perf_counter() - started
    outputs.write_datasets(store)
    return summary

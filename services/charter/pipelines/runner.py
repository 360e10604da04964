"""The one pipeline runner: what every pipeline does around its own steps.

A pipeline (`Pipeline`) says which items its source holds, which services it needs, how to process a
batch and how to finalise its datasets; the runner does the rest, the same way for all of them:
resume (items whose key is in the output folder are skipped, bad rows recorded once), start the
services in this process (local mode) or use the spec's addresses (remote mode), feed batches, turn
a batch the services reject as a caller error into per-item error records, map a mistake no retry
fixes (an unknown constitution) to a clear error, and time the run.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from grpc import aio

from charter.app.local import local_services
from charter.client.channel import PER_ITEM
from charter.core import tracing
from charter.core.errors import FailedPrecondition, NotFound
from charter.core.settings import CharterSettings
from charter.datasets.records import OutputStore
from charter.datasets.sources import RowError
from charter.inference.types import InferenceClient

Item = TypeVar("Item")


@dataclass
class Summary:
    """What one run did (the counts every pipeline keeps; pipelines add their own)."""

    total: int = 0
    already_done: int = 0
    written: int = 0
    row_errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    item_noun = "items"
    status_noun = "label"

    def as_dict(self) -> dict[str, Any]:
        """Every figure, named for `summary.json` (pipelines add their own after these)."""
        return {
            f"{self.item_noun}_total": self.total,
            "already_done": self.already_done,
            "written_this_run": self.written,
            "row_errors_this_run": self.row_errors,
            f"{self.status_noun}_statuses": dict(self.statuses),
            "errors_by_reason": dict(self.errors),
            "seconds": round(self.seconds, 2),
        }


class Pipeline(Protocol):
    """One pipeline's own steps; `run` drives it."""

    spec: Any
    """The pipeline spec: `output`, `batch_size`, `services` (mode, addresses, retries) and `digest()`."""

    @property
    def summary(self) -> Summary:
        """The run's counts (a pipeline's own `Summary` subclass)."""

    def collect(self) -> Iterable[Any]:
        """The source's items (rows with `key` and `index`, or `RowError`s)."""

    def local_services(self) -> tuple[str, ...]:
        """The services to start in this process in local mode (`charter serve` names)."""

    def connect(self, address: str | None) -> None:
        """Open clients: to `address` (the in-process services), or to the spec's remote addresses
        when None (raise InvalidArgument if one is missing)."""

    async def run_batch(self, items: list[Any], batches: Batches) -> None:
        """Process and write one batch (`batches.store`; `batches.split_on_item_errors` around the
        service calls, `batches.written(n)` after writing records)."""

    def finalise(self, store: OutputStore) -> None:
        """Rewrite the derived datasets from the records (runs whether or not anything was pending)."""

    async def close(self) -> None: ...


def record_row_error(store: OutputStore, summary: Summary, key: str, index: int, reason: str) -> None:
    """An error record for a source row, counted by the reason's prefix (the text before ':')."""
    store.add_error({"key": key, "source_index": index, "reason": reason})
    summary.row_errors += 1
    summary.errors[reason.split(":", 1)[0]] += 1


def select_pending(items: Iterable[Any], store: OutputStore, summary: Summary) -> list[Any]:
    """The source items this run still has to do. A bad row becomes an error record (once: not again
    on resume); an item whose key repeats one seen before is the same work and is skipped; an item
    whose key is already in the output folder counts as done."""
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


@dataclass
class Batches:
    """Row-level book-keeping a pipeline's `run_batch` uses: error records and progress."""

    store: OutputStore
    summary: Summary
    on_progress: Callable[[int], None]

    def written(self, n: int = 1) -> None:
        self.summary.written += n
        self.on_progress(n)

    def row_error(self, key: str, index: int, reason: str) -> None:
        record_row_error(self.store, self.summary, key, index, reason)
        self.on_progress(1)

    async def split_on_item_errors(
        self, items: Sequence[Item], process: Callable[[list[Item]], Awaitable[None]]
    ) -> None:
        """`process(items)`; when a service rejects the batch as a caller error (one prompt too long,
        …) the batch is split up so that only the bad items become error records."""
        try:
            await process(list(items))
        except aio.AioRpcError as err:
            if err.code() not in PER_ITEM:
                raise
            if len(items) == 1:
                item: Any = items[0]
                self.row_error(item.key, item.index, f"{err.code().name}: {err.details()}")
                return
            for item in items:
                await self.split_on_item_errors([item], process)


@contextlib.contextmanager
def traced_batch(spec: Any, items: Sequence[Any]) -> Iterator[None]:
    """While tracing is on: a span that opens a trace for the batch (the parent of every gRPC call made
    for its items) and one trace per item (`<kind>.item`, linked to the batch's span), whose
    `traceparent` the pipeline sends with the item (`tracing.item_traceparents`) and whose id goes in
    the item's record (`provenance_trace`). Nothing while tracing is off."""
    if not tracing.enabled():
        yield
        return
    kind = getattr(spec, "kind", "pipeline")
    keys = [str(getattr(item, "key", "")) for item in items]
    common = {"charter.pipeline": kind, "charter.spec_name": getattr(spec, "name", "")}
    attributes = {**common, "charter.items": len(items), "charter.item_keys": keys}
    with (
        tracing.span(f"{kind}.batch", attributes, root=True),
        tracing.item_traces(f"{kind}.item", keys, common),
    ):
        yield


def provenance_trace(key: str) -> dict[str, str]:
    """`{"trace_id": ...}` for the record of item `key`: its own trace's id (`traced_batch`), while
    tracing is on and the trace is sampled; empty otherwise, so records are what they were without
    it."""
    current = tracing.item_trace_id(key)
    return {"trace_id": current} if current else {}


async def run(
    pipeline: Pipeline,
    settings: CharterSettings,
    *,
    on_start: Callable[[int, int], None] = lambda total, done: None,
    on_progress: Callable[[int], None] = lambda n: None,
    engine: InferenceClient | None = None,
    engine_factory: Callable[[], InferenceClient] | None = None,
) -> Summary:
    """Run (or resume) `pipeline`; returns what this run did. Local mode serves on `engine`, else on
    `engine_factory()` (called only when there is work: a chain of specs shares one engine that way),
    else on an engine built from `settings.inference`."""
    started = time.perf_counter()
    spec, summary = pipeline.spec, pipeline.summary
    store = OutputStore(spec.output, spec.digest(), constitution_change=spec.constitution_change)
    pending = select_pending(pipeline.collect(), store, summary)
    on_start(summary.total, summary.already_done)
    if pending:
        local = spec.services.mode == "local"
        if local and engine is None and engine_factory is not None:
            engine = engine_factory()
        context: Any = (
            local_services(settings, pipeline.local_services(), engine=engine)
            if local
            else contextlib.nullcontext(None)
        )
        async with context as address:
            pipeline.connect(address)
            batches = Batches(store, summary, on_progress)
            try:
                for start in range(0, len(pending), spec.batch_size):
                    batch = pending[start : start + spec.batch_size]
                    with traced_batch(spec, batch):
                        await pipeline.run_batch(batch, batches)
            except aio.AioRpcError as err:  # a mistake no retry fixes, e.g. an unknown constitution
                error = NotFound if err.code() is grpc.StatusCode.NOT_FOUND else FailedPrecondition
                raise error(f"{err.code().name}: {err.details()}") from None
            finally:
                await pipeline.close()
    summary.seconds = time.perf_counter() - started
    pipeline.finalise(store)
    return summary

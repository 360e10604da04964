"""The base of the engines that run in this process (vLLM in-process, transformers).

One worker thread owns the model. Callers, from any event loop, put jobs on a queue; the worker
takes every job that is waiting (plus any that arrive within `batch_wait_s`), validates each on its
own — so one bad request fails only its caller — and feeds the rest to the engine as one batch.
Concurrent RPCs therefore reach the engine together, never one at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from charter.core.errors import CharterError, FailedPrecondition, Internal, ResourceExhausted, Unavailable
from charter.inference.deadlines import as_completed_within, await_with_deadline
from charter.inference.tokens import PreparedChat, ScoreItem, collect_scores, plan_scores, prepare_chat
from charter.inference.types import ChatRequest, ChatResult, ModelInfo, OptionScores, ScoreRequest

log = structlog.get_logger("charter.inference")

_STOP = object()


@dataclass
class _Job:
    kind: str  # "chat" | "score" | "weights"
    items: Sequence[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    prepared: Any = field(default=None)
    booked: bool = False
    """Its requests no longer count in the engine's pending total."""


def _resolve(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    def apply() -> None:
        if job.future.done():  # the caller gave up (deadline, cancellation)
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting
        job.loop.call_soon_threadsafe(apply)


class LocalEngine(ABC):
    engine_name = "local"
    swap_mode = "beside"
    """How the generator swaps models on this engine (`inference.policy`): load the new one beside it."""
    tokenizer: Any

    def __init__(
        self,
        info: ModelInfo,
        *,
        max_batch: int = 64,
        max_pending: int = 1024,
        batch_wait_s: float = 0.005,
        default_timeout: float | None = None,
    ) -> None:
        self._info = info
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.batch_wait_s = batch_wait_s
        self.default_timeout = default_timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self._running: list[_Job] = []  # the jobs of the engine call in progress (worker thread)
        self._thread = threading.Thread(target=self._work, name=f"{self.engine_name}-engine", daemon=True)
        self._thread.start()

    @property
    def model(self) -> ModelInfo:
        return self._info

    # ---- the engine's part ---------------------------------------------------------------------
    def _prepare_chat(self, requests: Sequence[ChatRequest]) -> list[PreparedChat]:
        """Tokenise and validate (raises `InvalidArgument`); runs on the worker thread."""
        return [prepare_chat(self.tokenizer, r, self.model.max_model_len) for r in requests]

    @abstractmethod
    def _generate(self, prepared: list[PreparedChat]) -> list[ChatResult]:
        """One engine call for the concatenated prepared requests of several jobs."""

    def _prepare_scores(self, requests: Sequence[ScoreRequest]) -> list[ScoreItem]:
        return plan_scores(self.tokenizer, requests, self.model.max_model_len)

    @abstractmethod
    def _score(self, items: list[ScoreItem]) -> list[list[float]]:
        """Each option's total log-probability after its prompt, for every item, in one engine call."""

    def _load_weights(self, folder: str) -> int:
        """Copy the safetensors tensors in `folder` into the model in place (checked beforehand by
        `inference.weights.check_push`); runs on the worker thread, between engine calls."""
        raise FailedPrecondition(f"the {self.engine_name} engine cannot load pushed weights")

    def _shutdown(self) -> None:  # noqa: B027 - optional hook
        pass

    def abandoned(self) -> bool:
        """Whether the engine call in progress has no one left to answer: every caller of its batch
        stopped waiting (deadline passed, cancelled), or the engine is closing. An engine that can stop
        mid-call (the transformers engine, between decoding steps) asks this and stops early."""
        running = self._running
        return self._closed or bool(running) and all(job.future.done() for job in running)

    # ---- the client side -------------------------------------------------------------------------
    def _submit(self, kind: str, items: Sequence[Any]) -> asyncio.Future[Any]:
        if self._closed:
            raise Unavailable(f"the {self.engine_name} engine is closed")
        with self._lock:
            if self._pending + len(items) > self.max_pending:
                pending, limit = self._pending, self.max_pending
                raise ResourceExhausted(
                    f"the engine queue is full ({pending} requests pending, {limit=}); retry"
                )
            self._pending += len(items)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(kind, items, loop, future))
        return future

    async def chat(
        self, requests: Sequence[ChatRequest], *, timeout: float | None = None
    ) -> list[ChatResult]:
        if not requests:
            return []
        return await await_with_deadline(
            self._submit("chat", list(requests)), timeout or self.default_timeout
        )

    async def chat_stream(
        self, requests: Sequence[ChatRequest], *, timeout: float | None = None
    ) -> AsyncIterator[tuple[int, ChatResult]]:
        # one job per request, queued together: the worker still batches them, and each result is
        # yielded as soon as its batch is done
        futures = [self._submit("chat", [r]) for r in requests]

        async def indexed(i: int, future: asyncio.Future[Any]) -> tuple[int, ChatResult]:
            return i, (await future)[0]

        try:
            jobs = [indexed(i, f) for i, f in enumerate(futures)]
            async for item in as_completed_within(jobs, timeout or self.default_timeout):
                yield item
        finally:
            for f in futures:
                f.cancel()

    async def score_options(
        self, requests: Sequence[ScoreRequest], *, timeout: float | None = None
    ) -> list[OptionScores]:
        if not requests:
            return []
        return await await_with_deadline(
            self._submit("score", list(requests)), timeout or self.default_timeout
        )

    async def load_weights(self, folder: str, *, timeout: float | None = None) -> int:
        """Load the weights in `folder` into the served model in place, between two engine calls
        (never during one); the number of tensors loaded. The caller checks the folder first
        (`inference.weights.check_push`) and keeps calls away meanwhile (`policy.ServedPolicy.push`)."""
        loaded: int = await await_with_deadline(self._submit("weights", [folder]), timeout)
        return loaded

    async def healthy(self) -> bool:
        """Whether calls can be served: open, and its worker thread running."""
        return not self._closed and self._thread.is_alive()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join, 60)

    # ---- the worker ------------------------------------------------------------------------------
    def _take_batch(self, first: _Job, held: collections.deque[_Job]) -> list[_Job]:
        batch, size = [first], len(first.items)
        others: collections.deque[_Job] = collections.deque()
        while held:  # jobs set aside by earlier batches: those of this kind join first, in order
            job = held.popleft()
            if job.kind == first.kind and size + len(job.items) <= self.max_batch:
                batch.append(job)
                size += len(job.items)
            else:
                others.append(job)
        held.extend(others)
        deadline = time.monotonic() + self.batch_wait_s
        while size < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)
                break
            if job.kind == first.kind and size + len(job.items) <= self.max_batch:
                batch.append(job)
                size += len(job.items)
            else:
                held.append(job)
        return batch

    def _work(self) -> None:
        held: collections.deque[_Job] = collections.deque()
        while True:
            job = held.popleft() if held else self._queue.get()
            if job is _STOP:
                break
            batch = self._take_batch(job, held)
            try:
                self._run(batch)
            finally:
                self._book(batch)
        try:
            self._shutdown()
        except Exception:
            log.exception("inference.shutdown.failed", engine=self.engine_name)

    def _book(self, jobs: Sequence[_Job]) -> None:
        """Take finished jobs off the pending total — before their callers wake, so a caller who submits
        again at once (the judge, within its budget) finds the room its finished work left."""
        done = [j for j in jobs if not j.booked]
        for j in done:
            j.booked = True
        with self._lock:
            self._pending -= sum(len(j.items) for j in done)

    def _run(self, batch: list[_Job]) -> None:
        if batch[0].kind == "weights":
            self._run_weights(batch)
            return
        live: list[_Job] = []
        for job in batch:
            if job.future.done():
                continue
            try:
                prepare = self._prepare_chat if job.kind == "chat" else self._prepare_scores
                job.prepared = prepare(job.items)
                live.append(job)
            except CharterError as err:
                self._book([job])
                _resolve(job, error=err)
            except Exception as err:  # a tokenizer failure on odd input is the caller's input, not a crash
                log.exception("inference.prepare.failed", engine=self.engine_name)
                self._book([job])
                _resolve(job, error=Internal(f"could not prepare the request: {err}"))
        if not live:
            return
        started = time.perf_counter()
        outcome: list[tuple[_Job, Any, BaseException | None]] = []
        self._running = live
        try:
            if live[0].kind == "chat":
                flat = [p for job in live for p in job.prepared]
                results = self._generate(flat)
                offset = 0
                for job in live:
                    outcome.append((job, results[offset : offset + len(job.items)], None))
                    offset += len(job.items)
            else:
                values = self._score([item for job in live for item in job.prepared])
                offset = 0
                for job in live:
                    count = len(job.prepared)
                    outcome.append((job, collect_scores(job.prepared, values[offset : offset + count]), None))
                    offset += count
        except CharterError as err:
            outcome = [(job, None, err) for job in live]
        except Exception as err:
            log.exception("inference.batch.failed", engine=self.engine_name)
            failure = Unavailable(f"the {self.engine_name} engine failed on this batch: {err}")
            outcome = [(job, None, failure) for job in live]
        finally:
            self._running = []
        # logged before any caller wakes, so whoever awaited the batch sees its record
        log.debug(
            "inference.batch.done",
            engine=self.engine_name,
            kind=live[0].kind,
            requests=sum(len(j.items) for j in live),
            jobs=len(live),
            seconds=round(time.perf_counter() - started, 3),
        )
        self._book(live)
        for job, result, error in outcome:
            _resolve(job, result, error)

    def _run_weights(self, jobs: list[_Job]) -> None:
        """Each weights job on its own, in order: the model is whole between two of them."""
        for job in jobs:
            if job.future.done():  # its caller gave up before it began: the model stays as it is
                self._book([job])
                continue
            try:
                result, error = self._load_weights(job.items[0]), None
            except CharterError as err:
                result, error = None, err
            except Exception as err:
                log.exception("inference.weights.failed", engine=self.engine_name)
                failure = Internal(f"the {self.engine_name} engine could not load the weights: {err}")
                result, error = None, failure
            self._book([job])
            _resolve(job, result, error)

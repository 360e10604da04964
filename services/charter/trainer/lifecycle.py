"""A training run's life, behind the trainer service: runs started, followed, resumed and cancelled
through an executor (a local subprocess or a Kubernetes Job), their state and events kept in the run
store.

A run's life: `start_run` checks the spec (constructing the TRL/PPO config), records the run PENDING,
launches a worker (attempt 1) and marks it RUNNING; a follower task reads the worker's event lines
into the store (metrics, checkpoints, data range, logs) and, when the worker ends, marks the run
SUCCEEDED or FAILED with the reason. Only lines carrying the attempt's event nonce (drawn when the
attempt is claimed, kept in the store, given to the worker) are events: whatever else the worker
prints, training data included, cannot forge one. `resume` launches attempt n + 1 with `--resume`,
which continues from the last checkpoint on the cached data. When the service restarts, `start`
re-adopts every active run: a worker still running is followed from where the store left off
(`events_seen`, and the attempt's nonce), one that vanished while the service was down is resumed
(`trainer.auto_resume`).

What a caller may ask is bounded by the settings (`charter.trainer.admission`, checked in `start_run`):
at most `trainer.max_active_runs` runs pending or running, and a worker still running
`trainer.max_run_seconds` after its start is stopped and its run FAILED.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from charter.core import db
from charter.core.errors import FailedPrecondition, Unavailable
from charter.core.settings import TrainerSettings
from charter.trainer import events, run_metrics
from charter.trainer.admission import Limits
from charter.trainer.executor import MODEL_DIR, Executor, Launch, build_executor
from charter.trainer.resolve import grants, resolve
from charter.trainer.runs import (
    ACTIVE,
    TERMINAL,
    CheckpointEvent,
    DataEvent,
    EventKind,
    LogEvent,
    MetricsEvent,
    Round,
    Run,
    RunEvent,
    RunSpec,
    RunState,
    StateEvent,
)
from charter.trainer.spec import check
from charter.trainer.store import RunStore

log = structlog.get_logger("charter.trainer")
T = TypeVar("T")
__all__ = ["RunLifecycle", "apply_event", "build_executor"]


def apply_event(run: Run, event: dict[str, Any]) -> list[EventKind]:
    """Fold one worker event into the run; the store events that record it. A run that has ended
    (cancelled while its worker still wrote) records nothing more: its end is its last event."""
    if run.state in TERMINAL:
        return []
    kind = event["type"]
    if kind == "metrics":
        values = events.finite(event.get("values", {}))
        run.step = max(run.step, int(event.get("step", 0)))
        run.last_metrics.update(values)
        return [MetricsEvent(step=int(event.get("step", 0)), values=values)]
    if kind == "checkpoint":
        run.last_checkpoint = str(event.get("path", ""))
        return [CheckpointEvent(step=int(event.get("step", 0)), path=run.last_checkpoint)]
    if kind == "progress":
        run.total_steps = int(event.get("total_steps", 0))
        return []
    if kind == "data":
        start, round_ = int(event.get("cursor_start", 0)), int(event.get("round", 0))
        if round_ <= 1 or run.cursor_start is None:  # a continuous run's range starts at its first round
            run.cursor_start = start
        run.cursor_end = int(event.get("cursor_end", 0))
        run.rows = int(event.get("rows", 0))
        return [
            DataEvent(
                cursor_start=start, cursor_end=run.cursor_end, rows=run.rows,
                labels_read=int(event.get("labels_read", 0)), skipped=_counts(event), round=round_,
            )
        ]  # fmt: skip
    if kind == "round":
        run.latest_round = max(run.latest_round, int(event.get("round", 0)))
        return [
            Round(
                round=int(event.get("round", 0)), cursor_start=int(event.get("cursor_start", 0)),
                cursor_end=int(event.get("cursor_end", 0)), rows=int(event.get("rows", 0)),
                labels_read=int(event.get("labels_read", 0)), skipped=_counts(event),
                model_dir=str(event.get("model_dir", "")), step=int(event.get("step", 0)),
            )
        ]  # fmt: skip
    if kind == "finished":
        run.output_dir = str(event.get("output_dir", ""))
        return [LogEvent(level="info", message=f"model written to {run.output_dir}")]
    level = "error" if kind == "error" else str(event.get("level", "info"))
    return [LogEvent(level=level, message=str(event.get("message", "")))]


def _counts(event: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in (event.get("skipped") or {}).items()}


def _end(run: Run, state: RunState, reason: str) -> list[EventKind]:
    if run.state in TERMINAL:  # cancelled meanwhile: that stands
        return []
    return [StateEvent(state=state, reason=reason)]


class RunLifecycle:
    """Runs through `executor`, recorded in `store`; `spec_json` writes a spec as the worker reads it
    (`charter.api.trainer.spec_json`)."""

    def __init__(
        self,
        store: RunStore,
        executor: Executor,
        settings: TrainerSettings,
        spec_json: Callable[[RunSpec], str],
    ) -> None:
        self.store, self.executor, self.settings = store, executor, settings
        self.spec_json = spec_json
        self.limits = Limits.from_settings(settings)
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self.closing = False

    # -- the service's lifecycle (charter.core.server.Lifecycle) -----------------------------------

    async def start(self) -> None:
        """Re-adopt the runs an earlier service process left active."""
        for record in await asyncio.to_thread(self.store.active):
            run_id = record.run.id
            if record.handle is None:
                if record.attempt == 0:  # recorded, never launched: launch it now (unless a replica does)
                    with contextlib.suppress(FailedPrecondition):
                        attempt = await self._db(self.store.claim, run_id, 0, states=(RunState.PENDING,))
                        await self._launch(
                            run_id, attempt, resume=False, note="launched after a trainer-service restart"
                        )
                else:  # claimed by a replica that is launching it now, or died doing so
                    log.warning("trainer.run.claimed_not_launched", run_id=run_id, attempt=record.attempt)
                continue
            outcome = await self.executor.outcome(record.handle, record.nonce or "")
            resume = outcome is not None and outcome.lost and self.settings.auto_resume
            log.info("trainer.run.adopted", run_id=run_id, running=outcome is None, resume=resume)
            self._follow(
                run_id,
                record.handle,
                record.events_seen,
                record.nonce or "",  # None: launched before nonces, its worker prints the bare prefix
                resume_if_lost=resume,
                started=record.run.started_at,
            )

    async def drain(self) -> None:
        self.closing = True  # watchers end with UNAVAILABLE and reconnect elsewhere
        for changed in self._changed.values():
            changed.set()

    async def stop(self) -> None:
        """Stop following; the workers go on (a restarted service adopts them)."""
        for task in self._followers.values():
            task.cancel()
        for task in list(self._followers.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.store.close()

    # -- runs -----------------------------------------------------------------------------------

    async def start_run(self, spec: RunSpec, idempotency_key: str = "") -> Run:
        """Check `spec`, record the run and launch its first attempt (once per idempotency key)."""
        if self.closing:
            raise Unavailable("the trainer service is shutting down; try another replica")
        await self._db(check, spec, limits=self.limits)
        spec = await self._db(resolve, spec, self.store, self.executor.name, self.limits)
        run, created = await self._db(
            self.store.create, spec, executor=self.executor.name, idempotency_key=idempotency_key,
            max_active=self.settings.max_active_runs,
        )  # fmt: skip
        if created:
            log.info("trainer.run.created", run_id=run.id, algorithm=spec.algorithm, name=spec.name)
            try:
                attempt = await self._db(self.store.claim, run.id, 0, states=(RunState.PENDING,))
            except FailedPrecondition:  # a restarting replica adopted the new run first: it launches it
                return await self.get(run.id)
            run = await self._launch(run.id, attempt, resume=False)
        return run

    async def get(self, run_id: str) -> Run:
        return await self._db(self.store.get, run_id)

    async def list(
        self, states: Sequence[int] = (), page_size: int = 50, page_token: str = ""
    ) -> tuple[list[Run], str]:
        return await self._db(self.store.list, list(states), page_size, page_token)

    async def cancel(self, run_id: str, reason: str = "") -> Run:
        record = await self._db(self.store.record, run_id)
        if record.run.state == RunState.CANCELLED:
            return record.run
        if record.run.state in TERMINAL:
            raise FailedPrecondition(
                f"run {record.run.id} has already ended ({record.run.state.label})", field="run_id"
            )
        reason = reason or "cancelled"
        # recorded first, so the follower, seeing the worker die, leaves the state alone
        run = await self._change(record.run.id, lambda run: _end(run, RunState.CANCELLED, reason))
        if record.handle is not None:
            await self.executor.cancel(record.handle)
        log.info("trainer.run.cancelled", run_id=run.id, reason=reason)
        return run

    async def resume(self, run_id: str) -> Run:
        record = await self._db(self.store.record, run_id)
        if record.run.state not in (RunState.FAILED, RunState.CANCELLED):
            raise FailedPrecondition(
                f"run {record.run.id} is {record.run.state.label}: only a failed or cancelled run resumes",
                field="run_id",
            )
        follower = self._followers.get(record.run.id)
        if follower is not None:  # the old attempt's follower is still reading its last lines
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(follower), timeout=30)
        where = record.run.last_checkpoint or "the start (no checkpoint yet)"
        note = f"resumed from {where} (attempt {record.attempt + 1})"
        # one launch per attempt: of concurrent ResumeRun calls (on any replica) one claims it
        attempt = await self._db(
            self.store.claim, record.run.id, record.attempt, states=(RunState.FAILED, RunState.CANCELLED),
            max_active=self.settings.max_active_runs, reason=f"resuming (attempt {record.attempt + 1})",
        )  # fmt: skip
        return await self._launch(record.run.id, attempt, resume=True, note=note)

    async def rounds(self, run_id: str) -> builtins.list[Round]:
        """The rounds a continuous run has published, oldest first."""
        return await self._db(self.store.rounds, run_id)

    async def watch(self, run_id: str, after: int = 0) -> AsyncIterator[RunEvent]:
        """The run's events after sequence `after`, live, until the run has ended and all are sent."""
        await self._db(self.store.get, run_id)  # NOT_FOUND for an unknown run
        while True:
            if self.closing:
                raise Unavailable("the trainer service is shutting down; watch again from your last sequence")
            changed = self._changed.setdefault(run_id, asyncio.Event())
            batch = await self._db(self.store.events, run_id, after)
            for event in batch:
                after = event.sequence
                yield event
            if batch:
                continue
            run = await self._db(self.store.get, run_id)
            if run.state in TERMINAL:
                tail = await self._db(self.store.events, run_id, after)
                if not tail:
                    return
                continue
            with contextlib.suppress(TimeoutError):  # another replica may be the one recording
                await asyncio.wait_for(changed.wait(), self.settings.poll_seconds * 4)

    # -- helpers --------------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _notify(self, run_id: str) -> None:
        changed = self._changed.pop(run_id, None)
        if changed is not None:
            changed.set()

    async def _change(self, run_id: str, mutate: Callable[[Run], Sequence[EventKind]], **columns: Any) -> Run:
        run, recorded = await self._db(self.store.change, run_id, mutate, **columns)
        run_metrics.export(run, recorded)
        self._notify(run_id)
        return run

    async def _persist(
        self, run_id: str, mutate: Callable[[Run], Sequence[EventKind]], **columns: Any
    ) -> Run:
        """`_change`, retried with backoff while the database is unreachable: a database that is down
        (restarting, failing over) pauses the recording of a healthy run's events, it does not fail
        the run. The worker's lines wait in its log meanwhile."""
        return await self._retrying(run_id, self._change, run_id, mutate, **columns)

    async def _retrying(self, run_id: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        delay = 0.2
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as err:
                if not db.unavailable(err) or self.closing:
                    raise
                log.warning("trainer.store.unavailable", run_id=run_id, retry_in_s=delay,
                            error=str(getattr(err, "orig", err)).strip()[:200])  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _launch(self, run_id: str, attempt: int, *, resume: bool, note: str = "") -> Run:
        record = await self._db(self.store.record, run_id)
        spec, nonce = record.run.spec, record.nonce
        if not nonce:  # every claim draws one; a row without is not this version's claim
            raise FailedPrecondition(f"run {run_id}: attempt {attempt} has no event nonce; resume the run")
        launch = Launch(
            run_id, attempt, self.spec_json(spec), resume, grants(spec, self.limits), _threads(spec), nonce
        )
        try:
            handle = await self.executor.launch(launch)
        except Exception as err:  # the platform refused it: the run fails with that reason
            log.warning("trainer.run.launch_failed", run_id=run_id, error=str(err))
            reason = f"could not start the worker: {err}"
            return await self._change(run_id, lambda run: [StateEvent(state=RunState.FAILED, reason=reason)])
        folder = self.executor.run_dir(run_id)

        def running(run: Run) -> list[EventKind]:
            if run.state in TERMINAL:  # cancelled between the claim and this launch: the cancel stands
                return []
            run.attempt = attempt
            run.output_dir = f"{folder}/{MODEL_DIR}"
            if self.executor.name == "kubernetes":
                run.job_name = handle.rsplit("/", 1)[-1]
            kinds: list[EventKind] = [StateEvent(state=RunState.RUNNING)]
            if note:
                kinds.append(LogEvent(level="info", message=note))
            return kinds

        run = await self._change(run_id, running, handle=handle, attempt=attempt, events_seen=0)
        if run.state in TERMINAL:
            await self.executor.cancel(handle)
            return run
        log.info("trainer.run.started", run_id=run_id, attempt=attempt, resume=resume, handle=handle)
        self._follow(run_id, handle, 0, nonce)
        return run

    def _follow(
        self,
        run_id: str,
        handle: str,
        seen: int,
        nonce: str,
        *,
        resume_if_lost: bool = False,
        started: float | None = None,
    ) -> None:
        task = asyncio.ensure_future(self._follower(run_id, handle, seen, nonce, resume_if_lost))
        self._followers[run_id] = task
        task.add_done_callback(
            lambda t: self._followers.pop(run_id, None) if self._followers.get(run_id) is t else None
        )
        timer = asyncio.ensure_future(self._deadline(run_id, handle, started or time.time()))
        task.add_done_callback(lambda _: timer.cancel())

    async def _deadline(self, run_id: str, handle: str, started: float) -> None:
        """Stop the worker once the run has run `trainer.max_run_seconds` (FAILED, saying so)."""
        limit = self.settings.max_run_seconds
        await asyncio.sleep(max(0.0, started + limit - time.time()))
        record = await self._db(self.store.record, run_id)
        if record.run.state in TERMINAL or record.handle != handle:
            return
        reason = f"the run passed its deadline of {limit:g} s (trainer.max_run_seconds)"
        # recorded first, so the follower, seeing the worker die, leaves the state alone
        await self._change(run_id, lambda run: _end(run, RunState.FAILED, reason))
        await self.executor.cancel(handle)
        log.warning("trainer.run.deadline", run_id=run_id, seconds=limit)

    async def _follower(self, run_id: str, handle: str, seen: int, nonce: str, resume_if_lost: bool) -> None:
        count = 0
        try:
            async for line in self.executor.lines(handle):
                event = events.parse(line, nonce)  # another nonce or none: printed text, not an event
                if event is None:
                    continue
                count += 1
                if count <= seen:  # recorded by an earlier service process
                    continue
                await self._persist(
                    run_id,
                    functools.partial(apply_event, event=event),
                    events_seen=count,
                    expect_handle=handle,
                )
            outcome = await self.executor.outcome(handle, nonce)
            while outcome is None:  # the log ended before the platform reports the end
                await asyncio.sleep(self.settings.poll_seconds)
                outcome = await self.executor.outcome(handle, nonce)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # following failed (the store, the platform): mark it, don't hide it
            log.exception("trainer.run.follow_failed", run_id=run_id)
            reason = f"the trainer service lost track of the worker: {err}"
            await self._change(run_id, lambda run: _end(run, RunState.FAILED, reason), expect_handle=handle)
            return
        record = await self._retrying(run_id, self._db, self.store.record, run_id)
        if record.handle != handle:  # another replica or request has launched a newer attempt
            return
        if outcome.lost and resume_if_lost and record.run.state not in TERMINAL:
            note = f"resumed after a trainer-service restart ({outcome.reason})"
            with contextlib.suppress(FailedPrecondition):  # a replica adopting it too may win the claim
                attempt = await self._db(
                    self.store.claim, run_id, record.attempt, states=tuple(ACTIVE), reason="resuming"
                )
                await self._launch(run_id, attempt, resume=True, note=note)
            return
        state = RunState.SUCCEEDED if outcome.succeeded else RunState.FAILED
        run = await self._persist(run_id, lambda run: _end(run, state, outcome.reason), expect_handle=handle)
        log.info("trainer.run.ended", run_id=run_id, state=f"RUN_STATE_{run.state.name}", reason=run.reason)


def _threads(spec: RunSpec) -> int | None:
    """A local worker's torch threads from `spec.resources.cpu` (whole cores, at least one)."""
    cpu = spec.resources.cpu.strip()
    if not cpu:
        return None
    try:
        cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    except ValueError:  # checked at StartRun; a run stored before that check
        return None
    return max(1, int(cores))

"""The trainer's run store: runs and their events in a database (SQLite by default, PostgreSQL via
`trainer.database_url`), so runs, their history and their checkpoints outlive the service process.

Every change to a run is one transaction that updates the run and appends the events describing
the change, so what `WatchRun` replays always agrees with what `GetRun` returns.

The store deals in `charter.trainer.runs` dataclasses. How a run and an event become the bytes of a
row's `payload` is the `RunCodec` it is given: `charter.api.trainer.PROTO_CODEC` writes the serialised
`charter.trainer.v1.Run` / `RunEvent`, the format the store has always had.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, and_, func, insert, or_, select, text, update

from charter.core import db
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from charter.trainer import events
from charter.trainer.runs import (
    ACTIVE,
    TERMINAL,
    EventKind,
    Round,
    Run,
    RunEvent,
    RunSpec,
    RunState,
    StateEvent,
)
from charter.trainer.schema import run_events, run_rounds, runs

__all__ = ["ACTIVE", "TERMINAL", "RunCodec", "RunRecord", "RunStore", "migrate"]
_MIGRATE_LOCK = 0x63747261  # advisory lock key: replicas migrate one at a time
_LAUNCH_LOCK = 0x6C61756E  # advisory lock key: replicas create and claim runs one at a time


def migrate(engine: Any) -> None:
    db.migrate(engine, Path(__file__).parent / "migrations", lock_key=_MIGRATE_LOCK)


class RunCodec(Protocol):
    """How runs and events are stored in a row's `payload` column."""

    def dump_run(self, run: Run) -> bytes: ...

    def load_run(self, data: bytes) -> Run: ...

    def dump_event(self, event: RunEvent) -> bytes: ...

    def load_event(self, data: bytes) -> RunEvent: ...


@dataclass(frozen=True)
class RunRecord:
    run: Run
    handle: str | None
    attempt: int
    events_seen: int
    executor: str
    nonce: str | None = None
    """The current attempt's event nonce (None: a run claimed before nonces, followed by the bare
    prefix)."""


class RunStore:
    def __init__(
        self,
        url: str,
        codec: RunCodec,
        *,
        clock: Callable[[], float] = time.time,
        run_migrations: bool = True,
    ) -> None:
        self.codec = codec
        self._db = db.Engines(url, pool_size=5)
        self.url, self.dialect = self._db.url, self._db.dialect
        self.clock = clock
        if run_migrations:
            migrate(self._db.engine)

    def close(self) -> None:
        self._db.dispose()

    def ping(self) -> None:
        """Reach the database once (raises when it cannot): the service's health probe."""
        db.ping(self._db.reader)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._db.writer_lock or contextlib.nullcontext(), self._db.engine.begin() as conn:
            yield conn

    def _locked(self, conn: Connection, run_id: str) -> Any:
        """The run's row, locked for this transaction (PostgreSQL; SQLite has one writer)."""
        query = select(runs).where(runs.c.id == run_id)
        if self.dialect == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"run {run_id} does not exist", field="run_id", value=run_id)
        return row

    def _serialise(self, conn: Connection) -> None:
        """Creating and claiming runs take turns across replicas (a transaction-scoped PostgreSQL
        advisory lock; on SQLite the process's writer lock already does), so the capacity count and
        the idempotency and attempt checks hold for the write that follows them."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LAUNCH_LOCK})

    # -- runs -----------------------------------------------------------------------------------

    def create(
        self, spec: RunSpec, *, executor: str, idempotency_key: str = "", max_active: int | None = None
    ) -> tuple[Run, bool]:
        """A new PENDING run (and its first event); with a known `idempotency_key`, the existing run
        and False. With `max_active` runs already pending or running: RESOURCE_EXHAUSTED."""
        key = idempotency_key or None
        with self._write() as conn:
            self._serialise(conn)
            if key is not None:
                found = conn.execute(select(runs.c.payload).where(runs.c.idempotency_key == key)).first()
                if found is not None:
                    return self.codec.load_run(found.payload), False
            if max_active is not None:
                self._capacity(conn, max_active)
            now = self.clock()
            run = Run(id=f"r-{uuid.uuid4().hex[:16]}", spec=spec, state=RunState.PENDING, created_at=now)
            conn.execute(
                insert(runs).values(
                    id=run.id,
                    state=int(run.state),
                    created_at=now,
                    idempotency_key=key,
                    executor=executor,
                    handle=None,
                    attempt=0,
                    events_seen=0,
                    payload=self.codec.dump_run(run),
                )  # fmt: skip
            )
            self._append(conn, run.id, [StateEvent(state=run.state)], now)
        return run, True

    @staticmethod
    def _capacity(conn: Any, max_active: int) -> None:
        active = conn.execute(
            select(func.count()).select_from(runs).where(runs.c.state.in_([int(s) for s in ACTIVE]))
        ).scalar_one()
        if active >= max_active:
            raise ResourceExhausted(
                f"{active} runs are pending or running, this trainer's limit (trainer.max_active_runs="
                f"{max_active}); wait for one to end or cancel one"
            )

    def claim(
        self, run_id: str, attempt: int, *, states: Sequence[RunState], max_active: int | None = None,
        reason: str = "",
    ) -> int:  # fmt: skip
        """Take the right to launch the run's next attempt: only when the run is in one of `states`
        and its recorded attempt is still `attempt` (no other caller or replica took it meanwhile).
        Returns the new attempt number; the run becomes PENDING (with a state event saying `reason`
        when it was not) and the attempt gets a fresh event nonce (`charter.trainer.events`).
        Otherwise FAILED_PRECONDITION, and nothing changes — so of concurrent StartRun, ResumeRun and
        service restarts exactly one launches a worker. With `max_active` runs already pending or
        running (the claimed one aside): RESOURCE_EXHAUSTED."""
        with self._write() as conn:
            self._serialise(conn)
            row = self._locked(conn, run_id)
            run = self.codec.load_run(row.payload)
            if run.state not in states or row.attempt != attempt:
                raise FailedPrecondition(
                    f"run {run_id} is {run.state.label} at attempt {row.attempt}: another request or "
                    "replica has already launched or resumed it",
                    field="run_id",
                )
            if max_active is not None and run.state not in ACTIVE:
                self._capacity(conn, max_active)
            was_pending = run.state == RunState.PENDING
            kinds = [] if was_pending else [StateEvent(state=RunState.PENDING, reason=reason)]
            run.state = RunState.PENDING
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(  # no worker until the claimant records its own: the old one's follower stops writing
                    state=int(run.state),
                    attempt=attempt + 1,
                    handle=None,
                    payload=self.codec.dump_run(run),
                    event_nonce=events.new_nonce(),
                )  # fmt: skip
            )
            self._append(conn, run_id, kinds, self.clock())
        return attempt + 1

    def record(self, run_id: str) -> RunRecord:
        with self._db.reader.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise NotFound(f"run {run_id} does not exist", field="run_id", value=run_id)
        return self._record(row)

    def _record(self, row: Any) -> RunRecord:
        return RunRecord(
            self.codec.load_run(row.payload), row.handle, row.attempt, row.events_seen, row.executor,
            row.event_nonce,
        )  # fmt: skip

    def get(self, run_id: str) -> Run:
        return self.record(run_id).run

    def active(self) -> list[RunRecord]:
        with self._db.reader.connect() as conn:
            rows = conn.execute(
                select(runs).where(runs.c.state.in_([int(s) for s in ACTIVE])).order_by(runs.c.created_at)
            ).all()
        return [self._record(r) for r in rows]

    def list(
        self, states: Sequence[int] = (), page_size: int = 50, page_token: str = ""
    ) -> tuple[list[Run], str]:
        """Newest first; `page_token` continues where the previous page ended."""
        size = min(max(page_size or 50, 1), 1000)
        query = select(runs.c.payload, runs.c.created_at, runs.c.id)
        if states:
            query = query.where(runs.c.state.in_([int(s) for s in states]))
        if page_token:
            try:
                created, _, last_id = base64.urlsafe_b64decode(page_token.encode()).decode().partition("|")
                after = float(created)
            except ValueError:
                raise InvalidArgument(
                    "page_token: not a token this service issued", field="page_token"
                ) from None
            query = query.where(
                or_(runs.c.created_at < after, and_(runs.c.created_at == after, runs.c.id < last_id))
            )
        query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(size + 1)
        with self._db.reader.connect() as conn:
            rows = conn.execute(query).all()
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = base64.urlsafe_b64encode(f"{rows[-1].created_at!r}|{rows[-1].id}".encode()).decode()
        return [self.codec.load_run(r.payload) for r in rows], token

    def change(
        self,
        run_id: str,
        mutate: Callable[[Run], Sequence[EventKind]],
        *,
        handle: str | None = None,
        attempt: int | None = None,
        events_seen: int | None = None,
        expect_handle: str | None = None,
    ) -> tuple[Run, builtins.list[RunEvent]]:
        """Apply `mutate` to the run in one transaction; it returns the events (MetricsEvent,
        CheckpointEvent, StateEvent, LogEvent, DataEvent, Round of `charter.trainer.runs`) to append.
        A `Round` is recorded in `run_rounds` too, once: a round already recorded (a resumed worker
        reports the rounds it finished again) appends nothing. With `expect_handle`, nothing changes
        unless the run's worker is still that one (a follower of a superseded attempt writes nothing)."""
        with self._write() as conn:
            row = self._locked(conn, run_id)
            run = self.codec.load_run(row.payload)
            if expect_handle is not None and row.handle != expect_handle:
                return run, []
            now = self.clock()
            kinds = self._rounds(conn, run_id, list(mutate(run)), now)
            for kind in kinds:
                if isinstance(kind, StateEvent):
                    run.state = RunState(kind.state)
                    if kind.state == RunState.RUNNING:
                        run.started_at = now
                        run.finished_at = None
                        run.reason = ""
                    elif kind.state in TERMINAL:
                        run.finished_at = now
                        run.reason = kind.reason
            values: dict[str, Any] = {"state": int(run.state), "payload": self.codec.dump_run(run)}
            if handle is not None:
                values["handle"] = handle
            if attempt is not None:
                values["attempt"] = attempt
            if events_seen is not None:
                values["events_seen"] = events_seen
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))
            appended = self._append(conn, run_id, kinds, now)
        return run, appended

    # -- rounds (continuous runs) ---------------------------------------------------------------

    def _rounds(
        self, conn: Connection, run_id: str, kinds: builtins.list[EventKind], now: float
    ) -> builtins.list[EventKind]:
        out: builtins.list[EventKind] = []
        for kind in kinds:
            if not isinstance(kind, Round):
                out.append(kind)
                continue
            known = conn.execute(
                select(run_rounds.c.round).where(
                    run_rounds.c.run_id == run_id, run_rounds.c.round == kind.round
                )
            ).first()
            if known is not None:
                continue
            kind = replace(kind, run_id=run_id, published_at=now)
            conn.execute(
                insert(run_rounds).values(
                    run_id=run_id,
                    round=kind.round,
                    cursor_start=kind.cursor_start,
                    cursor_end=kind.cursor_end,
                    rows=kind.rows,
                    labels_read=kind.labels_read,
                    skipped=json.dumps(kind.skipped, sort_keys=True),
                    model_dir=kind.model_dir,
                    step=kind.step,
                    published_at=now,
                )  # fmt: skip
            )
            out.append(kind)
        return out

    def rounds(self, run_id: str) -> builtins.list[Round]:
        """The rounds run `run_id` published, oldest first (NOT_FOUND for an unknown run)."""
        self.record(run_id)
        with self._db.reader.connect() as conn:
            rows = conn.execute(
                select(run_rounds).where(run_rounds.c.run_id == run_id).order_by(run_rounds.c.round)
            ).all()
        return [
            Round(
                run_id=r.run_id,
                round=r.round,
                cursor_start=r.cursor_start,
                cursor_end=r.cursor_end,
                rows=r.rows,
                labels_read=r.labels_read,
                skipped=json.loads(r.skipped),
                model_dir=r.model_dir,
                step=r.step,
                published_at=r.published_at,
            )  # fmt: skip
            for r in rows
        ]

    # -- events ---------------------------------------------------------------------------------

    def _append(
        self, conn: Connection, run_id: str, kinds: Sequence[EventKind], now: float
    ) -> builtins.list[RunEvent]:
        if not kinds:
            return []
        last = conn.execute(select(func.max(run_events.c.seq)).where(run_events.c.run_id == run_id)).scalar()
        out = [RunEvent(run_id, i, now, kind) for i, kind in enumerate(kinds, start=(last or 0) + 1)]
        conn.execute(
            insert(run_events),
            [{"run_id": run_id, "seq": e.sequence, "payload": self.codec.dump_event(e)} for e in out],
        )
        return out

    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> builtins.list[RunEvent]:
        with self._db.reader.connect() as conn:
            rows = conn.execute(
                select(run_events.c.payload)
                .where(run_events.c.run_id == run_id, run_events.c.seq > after)
                .order_by(run_events.c.seq)
                .limit(limit)
            ).all()
        return [self.codec.load_event(r.payload) for r in rows]

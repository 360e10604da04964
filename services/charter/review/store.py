"""The ledger: labels in, routing, the human queue with leases, decisions, the accepted stream.

One class, `Ledger`, over SQLAlchemy 2 Core, the same code on SQLite (the embedded default) and
PostgreSQL. Every method is synchronous and runs one short transaction; the gRPC servicer and the
web page call it from worker threads. It takes and returns the plain types of
`charter.review.types`; a label is kept as the opaque payload it was submitted with (see there).
Figures (stats, agreement, the admin overview) are in `charter.review.stats`.

Over 400 lines on purpose: one class whose operations (ingest, the leased queue, decisions, the
stream) share its transaction, writer-lock and stream-append plumbing; splitting it would put
that locking in several places.

Concurrency:
- SQLite: every write transaction starts with BEGIN IMMEDIATE, so writers take turns (WAL mode lets
  readers go on).
- PostgreSQL: a claim locks the slot it picks with FOR UPDATE SKIP LOCKED, so 20 reviewers claiming
  at once get 20 different slots; appends to the accepted stream hold a transaction-scoped advisory
  lock, so stream sequence numbers are committed in order and a reader never finds a smaller one
  later. Each append NOTIFYs `charter_accepted`.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import (
    ARRAY,
    Connection,
    Engine,
    String,
    any_,
    bindparam,
    exists,
    func,
    insert,
    select,
    text,
    update,
)

from charter.core import db, metrics
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.core.settings import RoutingSettings
from charter.review.routing import route
from charter.review.schema import accepted, decisions, items_closed, labels, review_slots
from charter.review.stats import free_slots, queue_depth, read_overview, read_stats
from charter.review.types import (
    CHOICES,
    AcceptedLabel,
    Choice,
    Claimed,
    Decided,
    HumanChoice,
    HumanDecision,
    LabelQuery,
    LabelSource,
    Page,
    ReviewItem,
    Route,
    RouteReason,
    Routing,
    Stats,
    Submission,
    SubmitResult,
    as_enum,
    key,
)

log = structlog.get_logger("charter.review")

NOTIFY_CHANNEL = "charter_accepted"
_ACCEPT_LOCK = 0x63686172  # advisory lock key that serialises appends to the accepted stream
MAX_COMMENT_CHARS = 4000
MAX_LABEL_ID_CHARS = 128
_CHUNK = 900  # ids per IN (...) query: under SQLite's bound-parameter limit

_HUMAN_P_A = {HumanChoice.A: 1.0, HumanChoice.B: 0.0, HumanChoice.TIE: 0.5}


def choice_of(p_a: float) -> Choice:
    if p_a > 0.5:
        return Choice.A
    if p_a < 0.5:
        return Choice.B
    return Choice.TIE


def migrate(engine: Engine) -> None:
    """Bring the ledger's database to the newest schema (alembic `upgrade head`)."""
    db.migrate(engine, Path(__file__).parent / "migrations", lock_key=_ACCEPT_LOCK + 1)


class Ledger:
    def ping(self) -> None:
        """Reach the database once (raises when it cannot): the service's health probe."""
        db.ping(self.reader)

    def __init__(
        self,
        url: str,
        routing: RoutingSettings | None = None,
        *,
        lease_seconds: int = 600,
        max_label_bytes: int = 262_144,
        max_submit_labels: int = 10_000,
        clock: Callable[[], float] = time.time,
        run_migrations: bool = True,
        pool_size: int = 20,
    ) -> None:
        self.routing = routing or RoutingSettings()
        self.lease_seconds = lease_seconds
        self.max_label_bytes = max_label_bytes
        self.max_submit_labels = max_submit_labels
        self.clock = clock
        self.listeners: list[Callable[[int], None]] = []
        """Called (from the writing thread) with the newest stream sequence after each commit that
        accepted labels; the servicer wakes its following streams with it."""
        engines = db.Engines(url, pool_size=pool_size)
        self.engine, self.reader, self.dialect, self.url = (
            engines.engine, engines.reader, engines.dialect, engines.url,
        )  # fmt: skip
        self._writer: Any = engines.writer_lock or contextlib.nullcontext()
        if run_migrations:
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()

    # -- transactions ---------------------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction on the ledger's database (queued on the writer lock on SQLite)."""
        return self._write()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        notify: list[int] = []
        # SQLite: writers of this process queue on a lock instead of in SQLite's busy handler, which
        # sleeps in growing steps and gave claims a p99 of over a second under 20 reviewers
        with self._writer, self.engine.begin() as conn:
            conn.info["accepted"] = notify
            yield conn
        if notify:
            for listener in self.listeners:
                listener(max(notify))

    def _append_accepted(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        if not rows:
            return []
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ACCEPT_LOCK})
            result = conn.execute(*db.pg_insert_unnest(accepted, rows, returning=("seq", "label_id")))
        else:
            result = conn.execute(insert(accepted).returning(accepted.c.seq, accepted.c.label_id), rows)
        by_id = {r.label_id: r.seq for r in result}
        seqs = [by_id[r["label_id"]] for r in rows]
        if self.dialect == "postgresql":
            conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}, '{max(seqs)}'"))
        conn.info["accepted"].append(max(seqs))
        return seqs

    # -- ingest ---------------------------------------------------------------------------------

    def submit(self, batch: Sequence[Submission]) -> list[SubmitResult]:
        """Append labels; a label whose id is already in the ledger is a no-op (duplicate=True, its
        original sequence). Validates the whole batch first: one bad label rejects the call."""
        if len(batch) > self.max_submit_labels:
            raise InvalidArgument(
                f"labels: {len(batch)} labels in one call; the limit is {self.max_submit_labels}",
                field="labels",
            )
        now = self.clock()
        rows: dict[str, dict[str, Any]] = {}
        routes: dict[str, Routing] = {}
        for i, label in enumerate(batch):
            check_submission(i, label, self.max_label_bytes)
            if label.label_id in rows:
                continue
            r = route(label, self.routing)
            routes[label.label_id] = r
            rows[label.label_id] = {
                "label_id": label.label_id,
                "constitution_id": label.constitution_id,
                "principle_id": label.principle_ids[0] if label.principle_ids else "",
                "p_a": label.p_a,
                "choice": int(label.choice),
                "confidence": label.confidence,
                "swap_consistent": label.swap_consistent,
                "status": int(label.status),
                "route": int(r.route),
                "reason": int(r.reason),
                "payload": label.payload,
                "created_at": now,
            }
        found: dict[str, SubmitResult] = {}
        with self._write() as conn:
            found.update(self._existing(conn, list(rows)))
            new = [row for label_id, row in rows.items() if label_id not in found]
            inserted: dict[str, int] = {}
            if new:
                if self.dialect == "postgresql":
                    stmt, params = db.pg_insert_unnest(
                        labels, new, conflict="label_id", returning=("seq", "label_id")
                    )
                    inserted = {r.label_id: r.seq for r in conn.execute(stmt, params)}
                else:
                    stmt = db.insert_ignore(conn, labels, "label_id")
                    stmt = stmt.returning(labels.c.seq, labels.c.label_id)
                    inserted = {r.label_id: r.seq for r in conn.execute(stmt, new)}
            raced = [row["label_id"] for row in new if row["label_id"] not in inserted]
            found.update(self._existing(conn, raced))  # written by a concurrent call meanwhile
            slots, accepts = [], []
            for label_id, seq in inserted.items():
                row, r = rows[label_id], routes[label_id]
                if r.queued:
                    slots += [
                        {
                            "item_id": label_id,
                            "label_seq": seq,
                            "constitution_id": row["constitution_id"],
                            "priority": r.priority,
                            "reason": int(r.reason),
                            "needed": self.routing.overlap,
                            "done": False,
                        }
                    ] * self.routing.overlap
                else:
                    accepts.append(
                        {
                            "label_id": label_id,
                            "label_seq": seq,
                            "constitution_id": row["constitution_id"],
                            "source": int(LabelSource.AI),
                            "p_a": row["p_a"],
                            "choice": row["choice"],
                            "confidence": row["confidence"],
                            "accepted_at": now,
                        }
                    )
            if slots:
                conn.execute(insert(review_slots), slots)
            self._append_accepted(conn, accepts)
        for label_id in inserted:
            r = routes[label_id]
            metrics.REVIEW_LABELS.labels(key(r.route), key(r.reason)).inc()
            if not r.queued:
                metrics.REVIEW_ACCEPTED.labels(key(LabelSource.AI)).inc()
        results, seen = [], set()
        for label in batch:
            label_id = label.label_id
            if label_id in inserted and label_id not in seen:
                r = routes[label_id]
                results.append(SubmitResult(label_id, inserted[label_id], r.route, r.reason))
            else:
                first = found.get(label_id) or SubmitResult(
                    label_id, inserted[label_id], routes[label_id].route, routes[label_id].reason
                )
                results.append(SubmitResult(label_id, first.sequence, first.route, first.reason, True))
            seen.add(label_id)
        return results

    def _existing(self, conn: Connection, ids: list[str]) -> dict[str, SubmitResult]:
        out = {}
        postgresql = self.dialect == "postgresql"
        step = max(len(ids), 1) if postgresql else _CHUNK  # PostgreSQL: one array parameter
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            wanted = (
                labels.c.label_id == any_(bindparam("ids", chunk, type_=ARRAY(String)))
                if postgresql
                else labels.c.label_id.in_(chunk)
            )
            q = select(labels.c.label_id, labels.c.seq, labels.c.route, labels.c.reason).where(wanted)
            for r in conn.execute(q):
                out[r.label_id] = SubmitResult(
                    r.label_id, r.seq, Route(r.route), RouteReason(r.reason), duplicate=True
                )
        return out

    # -- the human queue ------------------------------------------------------------------------

    def queue_depth(self, conn: Connection | None = None, constitution_id: str = "") -> int:
        """Review slots waiting for a reviewer (not decided, not under a live lease)."""
        if conn is not None:
            return queue_depth(conn, self.clock(), constitution_id)
        with self.reader.connect() as c:
            return queue_depth(c, self.clock(), constitution_id)

    def claim(self, reviewer: str, lease_seconds: int = 0, constitution_id: str = "") -> Claimed:
        """The most uncertain waiting item this reviewer has not decided or holds already, leased to
        them for `lease_seconds` (0 = the default)."""
        now = self.clock()
        lease = lease_seconds or self.lease_seconds
        s = review_slots
        mine = s.alias("mine")
        holds = (
            select(mine.c.slot_id)
            .where(mine.c.item_id == s.c.item_id, mine.c.reviewer == reviewer, mine.c.done.is_(False))
            .where(mine.c.lease_expires_at >= now)
        )
        decided = select(decisions.c.decision_id).where(
            decisions.c.item_id == s.c.item_id, decisions.c.reviewer == reviewer
        )
        q = (
            select(s.c.slot_id, s.c.item_id, s.c.reason, s.c.priority, s.c.needed)
            .where(free_slots(now), ~exists(holds), ~exists(decided))
            .order_by(s.c.priority.desc(), s.c.label_seq, s.c.slot_id)
            .limit(1)
        )
        if constitution_id:
            q = q.where(s.c.constitution_id == constitution_id)
        if self.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True, of=s)
        with self._write() as conn:
            row = conn.execute(q).first()
            if row is None:
                return Claimed(None, self.queue_depth(conn, constitution_id))
            lease_id = uuid.uuid4().hex
            expires = now + lease
            conn.execute(
                update(s)
                .where(s.c.slot_id == row.slot_id)
                .values(lease_id=lease_id, reviewer=reviewer, lease_expires_at=expires)
            )
            payload = conn.execute(
                select(labels.c.payload).where(labels.c.label_id == row.item_id)
            ).scalar_one()
            received = conn.execute(
                select(func.count()).select_from(s).where(s.c.item_id == row.item_id, s.c.done.is_(True))
            ).scalar_one()
            # SQLite: counted after commit (the count reads every open slot; not under the write lock)
            depth = None if self.dialect == "sqlite" else self.queue_depth(conn, constitution_id)
        if depth is None:
            depth = self.queue_depth(None, constitution_id)
        if not constitution_id:
            metrics.REVIEW_QUEUE_DEPTH.set(depth)
        item = ReviewItem(
            item_id=row.item_id,
            payload=bytes(payload),
            reason=RouteReason(row.reason),
            priority=row.priority,
            lease_id=lease_id,
            lease_expires_at=expires,
            decisions_needed=row.needed,
            decisions_received=int(received),
        )
        return Claimed(item, depth)

    def _held_slot(self, conn: Connection, reviewer: str, item_id: str, lease_id: str) -> Any:
        """The slot `reviewer` holds on `item_id` with `lease_id`, or a clear error."""
        s = review_slots
        q = select(s).where(s.c.item_id == item_id, s.c.lease_id == lease_id)
        if self.dialect == "postgresql":
            q = q.with_for_update()
        slot = conn.execute(q).first() if lease_id else None
        if slot is None:
            if conn.execute(select(s.c.slot_id).where(s.c.item_id == item_id).limit(1)).first() is None:
                raise NotFound(f"item_id: no review item {item_id!r}", field="item_id")
            if (
                lease_id
                and conn.execute(
                    select(decisions.c.decision_id).where(decisions.c.lease_id == lease_id)
                ).first()
            ):
                raise FailedPrecondition(
                    f"item {item_id!r} was already decided with this lease; claim a new item",
                    field="lease_id",
                )
            raise FailedPrecondition(
                f"item {item_id!r} is not claimed with this lease (it may have expired and gone to "
                "another reviewer); claim it again",
                field="lease_id",
            )
        if slot.reviewer != reviewer:
            raise FailedPrecondition(f"item {item_id!r} is claimed by another reviewer", field="item_id")
        if slot.done:
            raise FailedPrecondition(
                f"item {item_id!r} was already decided with this lease", field="lease_id"
            )
        if slot.lease_expires_at < self.clock():
            raise FailedPrecondition(
                f"the lease on item {item_id!r} expired; claim the item again", field="lease_id"
            )
        return slot

    def release(self, reviewer: str, item_id: str, lease_id: str) -> None:
        """Hand a claimed item back to the queue before its lease runs out."""
        with self._write() as conn:
            slot = self._held_slot(conn, reviewer, item_id, lease_id)
            conn.execute(
                update(review_slots)
                .where(review_slots.c.slot_id == slot.slot_id)
                .values(lease_id=None, reviewer=None, lease_expires_at=None)
            )

    def decide(
        self, reviewer: str, item_id: str, lease_id: str, choice: HumanChoice | int, comment: str = ""
    ) -> Decided:
        """Record `reviewer`'s decision on the item they hold. SKIP hands it back for someone else;
        the last of the wanted decisions accepts the label (the human choice overriding the AI's) or,
        when most reviewers found both responses unsafe, excludes it from training."""
        if choice not in CHOICES:
            names = ", ".join(f"HUMAN_CHOICE_{c.name}" for c in CHOICES)
            raise InvalidArgument(f"choice: unknown choice {choice!r}; use one of {names}", field="choice")
        choice = HumanChoice(choice)
        if len(comment) > MAX_COMMENT_CHARS:
            raise InvalidArgument(f"comment: longer than {MAX_COMMENT_CHARS} characters", field="comment")
        now = self.clock()
        s = review_slots
        with self._write() as conn:
            slot = self._held_slot(conn, reviewer, item_id, lease_id)
            conn.execute(
                insert(decisions).values(
                    item_id=item_id,
                    reviewer=reviewer,
                    choice=int(choice),
                    comment=comment,
                    lease_id=lease_id,
                    decided_at=now,
                )
            )
            done = choice != HumanChoice.SKIP
            values = (
                {"done": True} if done else {"lease_id": None, "reviewer": None, "lease_expires_at": None}
            )
            conn.execute(update(s).where(s.c.slot_id == slot.slot_id).values(**values))
            decision = HumanDecision(item_id, reviewer, choice, comment, now)
            open_left = conn.execute(
                select(func.count()).select_from(s).where(s.c.item_id == item_id, s.c.done.is_(False))
            ).scalar_one()
            accepted_label = None
            if done and not open_left:
                accepted_label = self._resolve(conn, item_id, slot.label_seq, slot.constitution_id, now)
        metrics.REVIEW_DECISIONS.labels(key(choice)).inc()
        if accepted_label is not None:
            metrics.REVIEW_ACCEPTED.labels(key(LabelSource.HUMAN)).inc()
        return Decided(decision, accepted_label)

    def _resolve(
        self, conn: Connection, item_id: str, label_seq: int, constitution_id: str, now: float
    ) -> AcceptedLabel | None:
        votes = [
            r.choice
            for r in conn.execute(
                select(decisions.c.choice).where(
                    decisions.c.item_id == item_id, decisions.c.choice != HumanChoice.SKIP
                )
            )
        ]
        unsafe = sum(v == HumanChoice.UNSAFE_BOTH for v in votes)
        if unsafe * 2 > len(votes):
            conn.execute(insert(items_closed).values(item_id=item_id, outcome="unsafe", closed_at=now))
            return None
        preferences = [_HUMAN_P_A[v] for v in votes if v in _HUMAN_P_A]
        p_a = sum(preferences) / len(preferences)
        conn.execute(insert(items_closed).values(item_id=item_id, outcome="accepted", closed_at=now))
        row = {
            "label_id": item_id,
            "label_seq": label_seq,
            "constitution_id": constitution_id,
            "source": int(LabelSource.HUMAN),
            "p_a": p_a,
            "choice": int(choice_of(p_a)),
            "confidence": abs(p_a - 0.5) * 2,
            "accepted_at": now,
        }
        (seq,) = self._append_accepted(conn, [row])
        return self._accepted(conn, [{**row, "seq": seq}])[0]

    # -- the accepted stream --------------------------------------------------------------------

    def accepted_after(self, cursor: int, query: LabelQuery | None = None, limit: int = 1000) -> Page:
        """The next page of the accepted stream after sequence `cursor`, in order, filtered."""
        a = accepted.c
        q = (
            select(accepted, labels.c.payload)  # one query: no second round trip for the payloads
            .join(labels, labels.c.seq == a.label_seq)
            .where(a.seq > cursor)
            .order_by(a.seq)
            .limit(limit)
        )
        if query is not None:
            if query.constitution_id:
                q = q.where(a.constitution_id == query.constitution_id)
            if query.sources:
                q = q.where(a.source.in_([int(x) for x in query.sources]))
            if query.min_confidence is not None:
                q = q.where(a.confidence >= query.min_confidence)
        with self.reader.connect() as conn:
            rows = [r._asdict() for r in conn.execute(q)]
            out = self._accepted(conn, rows)
        return Page(out, rows[-1]["seq"] if rows else cursor, len(rows) == limit)

    def last_sequence(self) -> int:
        with self.reader.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(accepted.c.seq), 0))).scalar_one())

    def _accepted(self, conn: Connection, rows: list[dict[str, Any]]) -> list[AcceptedLabel]:
        if not rows:
            return []
        payloads: dict[int, bytes] = {r["label_seq"]: r["payload"] for r in rows if "payload" in r}
        seqs = [r["label_seq"] for r in rows if r["label_seq"] not in payloads]
        for start in range(0, len(seqs), _CHUNK):
            q = select(labels.c.seq, labels.c.payload).where(labels.c.seq.in_(seqs[start : start + _CHUNK]))
            payloads.update({r.seq: r.payload for r in conn.execute(q)})
        human = [r["label_id"] for r in rows if r["source"] == LabelSource.HUMAN]
        by_item: dict[str, list[HumanDecision]] = defaultdict(list)
        for start in range(0, len(human), _CHUNK):
            q = (
                select(decisions)
                .where(decisions.c.item_id.in_(human[start : start + _CHUNK]))
                .where(decisions.c.choice != HumanChoice.SKIP)
                .order_by(decisions.c.decision_id)
            )
            for d in conn.execute(q):
                by_item[d.item_id].append(
                    HumanDecision(d.item_id, d.reviewer, HumanChoice(d.choice), d.comment, d.decided_at)
                )
        return [
            AcceptedLabel(
                sequence=r["seq"],
                label_id=r["label_id"],
                source=LabelSource(r["source"]),
                p_a=r["p_a"],
                choice=as_enum(Choice, r["choice"]),
                accepted_at=r["accepted_at"],
                payload=payloads[r["label_seq"]],
                human_decisions=tuple(by_item.get(r["label_id"], ())),
            )
            for r in rows
        ]

    # -- statistics -----------------------------------------------------------------------------

    def stats(self, constitution_id: str = "") -> Stats:
        """Totals and agreement (`charter.review.stats`), over every constitution or one."""
        with self.reader.connect() as conn:
            stats = read_stats(conn, self.clock(), constitution_id)
        if not constitution_id:
            metrics.REVIEW_QUEUE_DEPTH.set(stats.queue_depth)
        return stats

    def overview(self, bins: int = 10) -> dict[str, Any]:
        """For the admin page: labels by route and reason, and the AI confidence histogram."""
        with self.reader.connect() as conn:
            return read_overview(conn, bins)


def check_submission(i: int, label: Submission, max_bytes: int) -> None:
    """Refuse a label the ledger cannot keep (`i`: its place in the batch, for the message)."""
    where = f"labels[{i}]"
    if not label.label_id:
        raise InvalidArgument(f"{where}.id: a label needs its content-derived id", field=f"{where}.id")
    if len(label.label_id) > MAX_LABEL_ID_CHARS:
        raise InvalidArgument(f"{where}.id: longer than {MAX_LABEL_ID_CHARS} characters", field=f"{where}.id")
    size = len(label.payload)
    if size > max_bytes:
        raise InvalidArgument(
            f"{where}: {size} bytes serialised; the limit is {max_bytes} (review.max_label_bytes)",
            field=where,
        )
    if not 0.0 <= label.p_a <= 1.0 or not 0.0 <= label.confidence <= 1.0:
        raise InvalidArgument(f"{where}: p_a and confidence must lie in [0, 1]", field=f"{where}.p_a")
    disagreement = label.ensemble_disagreement
    if disagreement is not None and not 0.0 <= disagreement <= 1.0:
        raise InvalidArgument(
            f"{where}.ensemble_disagreement: must lie in [0, 1] ({disagreement=})",
            field=f"{where}.ensemble_disagreement",
        )
    if len(label.constitution_id) > 64 or any(len(p) > 64 for p in label.principle_ids):
        raise InvalidArgument(
            f"{where}: constitution and principle ids are at most 64 characters", field=where
        )

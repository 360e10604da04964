"""The ledger: labels in, routing, the human queue with leases, decisions, the accepted stream.

One class, `Ledger`, over SQLAlchemy 2 Core, the same code on SQLite (the embedded default) and
PostgreSQL. Every method is synchronous and runs one short transaction; the gRPC servicer and the
web page call it from worker threads.

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
import functools
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from charter_proto.common.v1 import label_pb2
from charter_proto.review.v1 import review_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    ARRAY,
    Connection,
    Engine,
    String,
    and_,
    any_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from charter.core import db, metrics
from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound
from charter.core.settings import RoutingSettings
from charter.review.agreement import Agreement, cohen_kappa
from charter.review.routing import route
from charter.review.schema import accepted, decisions, items_closed, labels, review_slots

log = structlog.get_logger("charter.review")

NOTIFY_CHANNEL = "charter_accepted"
_ACCEPT_LOCK = 0x63686172  # advisory lock key that serialises appends to the accepted stream
MAX_COMMENT_CHARS = 4000
MAX_LABEL_ID_CHARS = 128
_CHUNK = 900  # ids per IN (...) query: under SQLite's bound-parameter limit

DECIDED = (
    review_pb2.HUMAN_CHOICE_A,
    review_pb2.HUMAN_CHOICE_B,
    review_pb2.HUMAN_CHOICE_TIE,
    review_pb2.HUMAN_CHOICE_UNSAFE_BOTH,
)
CHOICES = (*DECIDED, review_pb2.HUMAN_CHOICE_SKIP)
_HUMAN_P_A = {
    review_pb2.HUMAN_CHOICE_A: 1.0,
    review_pb2.HUMAN_CHOICE_B: 0.0,
    review_pb2.HUMAN_CHOICE_TIE: 0.5,
}
CHOICE_NAMES = {label_pb2.CHOICE_A: "A", label_pb2.CHOICE_B: "B", label_pb2.CHOICE_TIE: "tie"}
"""The judge's (and an accepted label's) choice as records, pages and agreement tables name it."""
_HUMAN_CATEGORY = {
    review_pb2.HUMAN_CHOICE_A: "A",
    review_pb2.HUMAN_CHOICE_B: "B",
    review_pb2.HUMAN_CHOICE_TIE: "tie",
    review_pb2.HUMAN_CHOICE_UNSAFE_BOTH: "unsafe",
}


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def choice_of(p_a: float) -> int:
    if p_a > 0.5:
        return label_pb2.CHOICE_A
    if p_a < 0.5:
        return label_pb2.CHOICE_B
    return label_pb2.CHOICE_TIE


@dataclass(frozen=True)
class Claimed:
    item: review_pb2.ReviewItem | None
    queue_depth: int


@dataclass(frozen=True)
class Page:
    labels: list[review_pb2.AcceptedLabel]
    last: int
    """The last sequence examined: continue from here (the filter may have dropped every row)."""
    more: bool
    """The page was full: ask again at once."""


@dataclass(frozen=True)
class Decided:
    decision: review_pb2.HumanDecision
    accepted: review_pb2.AcceptedLabel | None


def migrate(engine: Engine) -> None:
    """Bring the ledger's database to the newest schema (alembic `upgrade head`)."""
    db.migrate(engine, Path(__file__).parent / "migrations", lock_key=_ACCEPT_LOCK + 1)


class Ledger:
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
            result = conn.execute(*_pg_insert_unnest(accepted, rows, returning=("seq", "label_id")))
        else:
            result = conn.execute(insert(accepted).returning(accepted.c.seq, accepted.c.label_id), rows)
        by_id = {r.label_id: r.seq for r in result}
        seqs = [by_id[r["label_id"]] for r in rows]
        if self.dialect == "postgresql":
            conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}, '{max(seqs)}'"))
        conn.info["accepted"].append(max(seqs))
        return seqs

    # -- ingest ---------------------------------------------------------------------------------

    def submit(self, batch: Sequence[label_pb2.PreferenceLabel]) -> list[review_pb2.SubmitResult]:
        """Append labels; a label whose id is already in the ledger is a no-op (duplicate=True, its
        original sequence). Validates the whole batch first: one bad label rejects the call."""
        if len(batch) > self.max_submit_labels:
            raise InvalidArgument(
                f"labels: {len(batch)} labels in one call; the limit is {self.max_submit_labels}",
                field="labels",
            )
        now = self.clock()
        rows: dict[str, dict[str, Any]] = {}
        routes: dict[str, Any] = {}
        for i, label in enumerate(batch):
            _check_label(i, label, self.max_label_bytes)
            if label.id in rows:
                continue
            r = route(label, self.routing)
            routes[label.id] = r
            rows[label.id] = {
                "label_id": label.id,
                "constitution_id": label.constitution.id,
                "principle_id": label.principle_ids[0] if label.principle_ids else "",
                "p_a": label.p_a,
                "choice": label.choice,
                "confidence": label.confidence,
                "swap_consistent": label.swap_consistent,
                "status": label.status,
                "route": r.route,
                "reason": r.reason,
                "payload": label.SerializeToString(),
                "created_at": now,
            }
        found: dict[str, review_pb2.SubmitResult] = {}
        with self._write() as conn:
            found.update(self._existing(conn, list(rows)))
            new = [row for label_id, row in rows.items() if label_id not in found]
            inserted: dict[str, int] = {}
            if new:
                if self.dialect == "postgresql":
                    stmt, params = _pg_insert_unnest(
                        labels, new, conflict="label_id", returning=("seq", "label_id")
                    )
                    inserted = {r.label_id: r.seq for r in conn.execute(stmt, params)}
                else:
                    stmt = _insert_ignore(conn, labels, "label_id").returning(labels.c.seq, labels.c.label_id)
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
                            "reason": r.reason,
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
                            "source": review_pb2.LABEL_SOURCE_AI,
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
            metrics.REVIEW_LABELS.labels(
                _name(review_pb2.Route, r.route), _name(review_pb2.RouteReason, r.reason)
            ).inc()
            if not r.queued:
                metrics.REVIEW_ACCEPTED.labels("ai").inc()
        results, seen = [], set()
        for label in batch:
            if label.id in inserted and label.id not in seen:
                r = routes[label.id]
                results.append(
                    review_pb2.SubmitResult(
                        label_id=label.id, sequence=inserted[label.id], route=r.route, reason=r.reason
                    )
                )
            else:
                first = found.get(label.id) or review_pb2.SubmitResult(
                    label_id=label.id,
                    sequence=inserted[label.id],
                    route=routes[label.id].route,
                    reason=routes[label.id].reason,
                )
                dup = review_pb2.SubmitResult()
                dup.CopyFrom(first)
                dup.duplicate = True
                results.append(dup)
            seen.add(label.id)
        return results

    def _existing(self, conn: Connection, ids: list[str]) -> dict[str, review_pb2.SubmitResult]:
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
                out[r.label_id] = review_pb2.SubmitResult(
                    label_id=r.label_id, sequence=r.seq, duplicate=True, route=r.route, reason=r.reason
                )
        return out

    # -- the human queue ------------------------------------------------------------------------

    def _free(self, now: float) -> Any:
        s = review_slots.c
        return and_(s.done.is_(False), or_(s.lease_expires_at.is_(None), s.lease_expires_at < now))

    def queue_depth(self, conn: Connection | None = None, constitution_id: str = "") -> int:
        """Review slots waiting for a reviewer (not decided, not under a live lease)."""
        q = select(func.count()).select_from(review_slots).where(self._free(self.clock()))
        if constitution_id:
            q = q.where(review_slots.c.constitution_id == constitution_id)
        if conn is not None:
            return int(conn.execute(q).scalar_one())
        with self.reader.connect() as c:
            return int(c.execute(q).scalar_one())

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
            .where(self._free(now), ~exists(holds), ~exists(decided))
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
        item = review_pb2.ReviewItem(
            item_id=row.item_id,
            label=label_pb2.PreferenceLabel.FromString(payload),
            reason=row.reason,
            priority=row.priority,
            lease_id=lease_id,
            lease_expires_at=_timestamp(expires),
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

    def decide(self, reviewer: str, item_id: str, lease_id: str, choice: int, comment: str = "") -> Decided:
        """Record `reviewer`'s decision on the item they hold. SKIP hands it back for someone else;
        the last of the wanted decisions accepts the label (the human choice overriding the AI's) or,
        when most reviewers found both responses unsafe, excludes it from training."""
        if choice not in CHOICES:
            names = ", ".join(review_pb2.HumanChoice.Name(c) for c in CHOICES)
            raise InvalidArgument(f"choice: unknown choice {choice!r}; use one of {names}", field="choice")
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
                    choice=choice,
                    comment=comment,
                    lease_id=lease_id,
                    decided_at=now,
                )
            )
            done = choice != review_pb2.HUMAN_CHOICE_SKIP
            values = (
                {"done": True} if done else {"lease_id": None, "reviewer": None, "lease_expires_at": None}
            )
            conn.execute(update(s).where(s.c.slot_id == slot.slot_id).values(**values))
            decision = review_pb2.HumanDecision(
                item_id=item_id,
                label_id=item_id,
                reviewer=reviewer,
                choice=choice,
                comment=comment,
                decided_at=_timestamp(now),
            )
            open_left = conn.execute(
                select(func.count()).select_from(s).where(s.c.item_id == item_id, s.c.done.is_(False))
            ).scalar_one()
            accepted_label = None
            if done and not open_left:
                accepted_label = self._resolve(conn, item_id, slot.label_seq, slot.constitution_id, now)
        metrics.REVIEW_DECISIONS.labels(_name(review_pb2.HumanChoice, choice)).inc()
        if accepted_label is not None:
            metrics.REVIEW_ACCEPTED.labels("human").inc()
        return Decided(decision, accepted_label)

    def _resolve(
        self, conn: Connection, item_id: str, label_seq: int, constitution_id: str, now: float
    ) -> review_pb2.AcceptedLabel | None:
        votes = [
            r.choice
            for r in conn.execute(
                select(decisions.c.choice).where(
                    decisions.c.item_id == item_id, decisions.c.choice != review_pb2.HUMAN_CHOICE_SKIP
                )
            )
        ]
        unsafe = sum(v == review_pb2.HUMAN_CHOICE_UNSAFE_BOTH for v in votes)
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
            "source": review_pb2.LABEL_SOURCE_HUMAN,
            "p_a": p_a,
            "choice": choice_of(p_a),
            "confidence": abs(p_a - 0.5) * 2,
            "accepted_at": now,
        }
        (seq,) = self._append_accepted(conn, [row])
        return self._accepted_protos(conn, [{**row, "seq": seq}])[0]

    # -- the accepted stream --------------------------------------------------------------------

    def accepted_after(
        self, cursor: int, flt: review_pb2.LabelFilter | None = None, limit: int = 1000
    ) -> Page:
        """The next page of the accepted stream after sequence `cursor`, in order, filtered."""
        a = accepted.c
        q = (
            select(accepted, labels.c.payload)  # one query: no second round trip for the payloads
            .join(labels, labels.c.seq == a.label_seq)
            .where(a.seq > cursor)
            .order_by(a.seq)
            .limit(limit)
        )
        if flt is not None:
            if flt.constitution_id:
                q = q.where(a.constitution_id == flt.constitution_id)
            if flt.sources:
                q = q.where(a.source.in_(list(flt.sources)))
            if flt.HasField("min_confidence"):
                q = q.where(a.confidence >= flt.min_confidence)
        with self.reader.connect() as conn:
            rows = [r._asdict() for r in conn.execute(q)]
            out = self._accepted_protos(conn, rows)
        if flt is not None and flt.principle_ids:
            wanted = set(flt.principle_ids)
            out = [x for x in out if wanted.intersection(x.label.principle_ids)]
        return Page(out, rows[-1]["seq"] if rows else cursor, len(rows) == limit)

    def last_sequence(self) -> int:
        with self.reader.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(accepted.c.seq), 0))).scalar_one())

    def _accepted_protos(
        self, conn: Connection, rows: list[dict[str, Any]]
    ) -> list[review_pb2.AcceptedLabel]:
        if not rows:
            return []
        payloads: dict[int, bytes] = {r["label_seq"]: r["payload"] for r in rows if "payload" in r}
        seqs = [r["label_seq"] for r in rows if r["label_seq"] not in payloads]
        for start in range(0, len(seqs), _CHUNK):
            q = select(labels.c.seq, labels.c.payload).where(labels.c.seq.in_(seqs[start : start + _CHUNK]))
            payloads.update({r.seq: r.payload for r in conn.execute(q)})
        human = [r["label_id"] for r in rows if r["source"] == review_pb2.LABEL_SOURCE_HUMAN]
        by_item: dict[str, list[review_pb2.HumanDecision]] = defaultdict(list)
        for start in range(0, len(human), _CHUNK):
            q = (
                select(decisions)
                .where(decisions.c.item_id.in_(human[start : start + _CHUNK]))
                .where(decisions.c.choice != review_pb2.HUMAN_CHOICE_SKIP)
                .order_by(decisions.c.decision_id)
            )
            for d in conn.execute(q):
                by_item[d.item_id].append(
                    review_pb2.HumanDecision(
                        item_id=d.item_id,
                        label_id=d.item_id,
                        reviewer=d.reviewer,
                        choice=d.choice,
                        comment=d.comment,
                        decided_at=_timestamp(d.decided_at),
                    )
                )
        out = []
        for r in rows:
            label = review_pb2.AcceptedLabel(
                sequence=r["seq"],
                source=r["source"],
                p_a=r["p_a"],
                choice=r["choice"],
                human_decisions=by_item.get(r["label_id"], ()),
            )
            label.label.MergeFromString(payloads[r["label_seq"]])  # parsed in place, not copied in
            label.accepted_at.FromNanoseconds(int(r["accepted_at"] * 1e9))
            out.append(label)
        return out

    # -- statistics -----------------------------------------------------------------------------

    def stats(self, constitution_id: str = "") -> review_pb2.StatsResponse:
        now = self.clock()

        def scoped(q: Any, column: Any) -> Any:
            return q.where(column == constitution_id) if constitution_id else q

        s = review_slots.c
        with self.reader.connect() as conn:
            count = lambda q: int(conn.execute(q).scalar_one())  # noqa: E731
            total = count(scoped(select(func.count()).select_from(labels), labels.c.constitution_id))
            depth = self.queue_depth(conn, constitution_id)
            claimed = count(
                scoped(
                    select(func.count())
                    .select_from(review_slots)
                    .where(s.done.is_(False), s.lease_expires_at >= now),
                    s.constitution_id,
                )
            )
            by_source = dict(
                conn.execute(
                    scoped(
                        select(accepted.c.source, func.count()).group_by(accepted.c.source),
                        accepted.c.constitution_id,
                    )
                ).all()
            )
            rejected = count(
                scoped(
                    select(func.count())
                    .select_from(labels)
                    .where(labels.c.route == review_pb2.ROUTE_REJECTED),
                    labels.c.constitution_id,
                )
            )
            last = count(
                scoped(select(func.coalesce(func.max(accepted.c.seq), 0)), accepted.c.constitution_id)
            )
            q = (
                select(
                    decisions.c.item_id,
                    decisions.c.reviewer,
                    decisions.c.choice,
                    labels.c.choice.label("ai_choice"),
                    labels.c.principle_id,
                )
                .join(labels, labels.c.label_id == decisions.c.item_id)
                .where(decisions.c.choice != review_pb2.HUMAN_CHOICE_SKIP)
                .order_by(decisions.c.decision_id)
            )
            votes = conn.execute(scoped(q, labels.c.constitution_id)).all()
        human_human, human_ai, by_principle, by_reviewer = _agreements(votes)
        if not constitution_id:
            metrics.REVIEW_QUEUE_DEPTH.set(depth)
        response = review_pb2.StatsResponse(
            labels_total=total,
            queue_depth=depth,
            claimed=claimed,
            auto_accepted=by_source.get(review_pb2.LABEL_SOURCE_AI, 0),
            human_accepted=by_source.get(review_pb2.LABEL_SOURCE_HUMAN, 0),
            rejected=rejected,
            human_human=_agreement_proto(human_human),
            human_ai=_agreement_proto(human_ai),
            last_cursor=review_pb2.LabelCursor(sequence=last),
        )
        for principle, agreement in sorted(by_principle.items()):
            response.human_ai_by_principle[principle].CopyFrom(_agreement_proto(agreement))
        for reviewer, (n, agreement) in sorted(by_reviewer.items()):
            response.reviewers.add(reviewer=reviewer, decisions=n, with_ai=_agreement_proto(agreement))
        return response

    def overview(self, bins: int = 10) -> dict[str, Any]:
        """For the admin page: labels by route and reason, and the AI confidence histogram."""
        with self.reader.connect() as conn:
            routes = conn.execute(
                select(labels.c.route, labels.c.reason, func.count()).group_by(
                    labels.c.route, labels.c.reason
                )
            ).all()
            bucket = func.floor(labels.c.confidence * bins)
            histogram = dict(conn.execute(select(bucket, func.count()).group_by(bucket)).all())
            outcomes = dict(
                conn.execute(
                    select(items_closed.c.outcome, func.count()).group_by(items_closed.c.outcome)
                ).all()
            )
        counts = [0] * bins
        for b, n in histogram.items():
            counts[min(int(b), bins - 1)] += int(n)
        return {
            "routes": [
                {
                    "route": review_pb2.Route.Name(r).removeprefix("ROUTE_").lower(),
                    "reason": review_pb2.RouteReason.Name(reason).removeprefix("ROUTE_REASON_").lower(),
                    "labels": int(n),
                }
                for r, reason, n in routes
            ],
            "confidence_histogram": {"edges": [i / bins for i in range(bins + 1)], "counts": counts},
            "closed": {k: int(v) for k, v in outcomes.items()},
        }


def _agreements(votes: Sequence[Any]) -> tuple[Agreement, Agreement, dict[str, Agreement], dict[str, Any]]:
    by_item: dict[str, list[Any]] = defaultdict(list)
    ai_pairs: list[tuple[str, str]] = []
    principle_pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    reviewer_pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    reviewer_n: dict[str, int] = defaultdict(int)
    for v in votes:
        by_item[v.item_id].append(v)
        reviewer_n[v.reviewer] += 1
        human, ai = _HUMAN_CATEGORY[v.choice], CHOICE_NAMES.get(v.ai_choice)
        if ai is None or human == "unsafe":  # no AI preference, or no human preference, to compare
            continue
        ai_pairs.append((human, ai))
        principle_pairs[v.principle_id or "(none)"].append((human, ai))
        reviewer_pairs[v.reviewer].append((human, ai))
    hh = [
        (_HUMAN_CATEGORY[a.choice], _HUMAN_CATEGORY[b.choice])
        for item in by_item.values()
        for i, a in enumerate(item)
        for b in item[i + 1 :]
        if a.reviewer != b.reviewer
    ]
    return (
        cohen_kappa(hh),
        cohen_kappa(ai_pairs),
        {p: cohen_kappa(pairs) for p, pairs in principle_pairs.items()},
        {r: (n, cohen_kappa(reviewer_pairs.get(r, []))) for r, n in reviewer_n.items()},
    )


def _name(enum: Any, value: int) -> str:
    """`ROUTE_REASON_AUDIT` -> `audit` (metric label values)."""
    prefix = {"Route": "ROUTE_", "RouteReason": "ROUTE_REASON_", "HumanChoice": "HUMAN_CHOICE_"}
    return enum.Name(value).removeprefix(prefix[enum.DESCRIPTOR.name]).lower()


def _agreement_proto(a: Agreement) -> review_pb2.Agreement:
    return review_pb2.Agreement(pairs=a.pairs, agreement=a.agreement, cohen_kappa=a.kappa)


def _check_label(i: int, label: label_pb2.PreferenceLabel, max_bytes: int) -> None:
    where = f"labels[{i}]"
    if not label.id:
        raise InvalidArgument(f"{where}.id: a label needs its content-derived id", field=f"{where}.id")
    if len(label.id) > MAX_LABEL_ID_CHARS:
        raise InvalidArgument(f"{where}.id: longer than {MAX_LABEL_ID_CHARS} characters", field=f"{where}.id")
    size = label.ByteSize()
    if size > max_bytes:
        raise InvalidArgument(
            f"{where}: {size} bytes serialised; the limit is {max_bytes} (review.max_label_bytes)",
            field=where,
        )
    if not 0.0 <= label.p_a <= 1.0 or not 0.0 <= label.confidence <= 1.0:
        raise InvalidArgument(f"{where}: p_a and confidence must lie in [0, 1]", field=f"{where}.p_a")
    if len(label.constitution.id) > 64 or any(len(p) > 64 for p in label.principle_ids):
        raise InvalidArgument(
            f"{where}: constitution and principle ids are at most 64 characters", field=where
        )


def _pg_insert_unnest(
    table: Any, rows: list[dict[str, Any]], *, conflict: str = "", returning: tuple[str, ...] = ()
) -> tuple[Any, dict[str, list[Any]]]:
    """A multi-row INSERT on PostgreSQL as `INSERT ... SELECT * FROM unnest(<one array per column>)`:
    one short statement with one parameter per column, however many rows. (An executemany of 1,000
    rows renders a 13,000-placeholder VALUES list that psycopg re-parses in Python on every call: it
    caches only statements under 4 KB and 50 parameters.)"""
    columns = tuple(rows[0])
    return _pg_unnest_sql(table, columns, conflict, returning), {c: [r[c] for r in rows] for c in columns}


@functools.cache
def _pg_unnest_sql(table: Any, columns: tuple[str, ...], conflict: str, returning: tuple[str, ...]) -> Any:
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    arrays = ", ".join(f"CAST(:{c} AS {table.c[c].type.compile(dialect=dialect)}[])" for c in columns)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
    if conflict:
        sql += f" ON CONFLICT ({conflict}) DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    return text(sql)


def _insert_ignore(conn: Connection, table: Any, key: str) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=[key])
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])

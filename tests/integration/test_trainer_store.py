"""The trainer's run store on SQLite and PostgreSQL: migrations, idempotent creation, changes with
their events in one transaction, paging, and sharing a database with the review ledger."""

from __future__ import annotations

import pytest
from charter.api.trainer import run_store
from charter.core.db import normalise_url
from charter.core.errors import InvalidArgument, NotFound
from charter.review.store import migrate as migrate_ledger
from charter.trainer.runs import LogEvent, MetricsEvent, Run, RunSpec, RunState, StateEvent
from charter.trainer.schema import VERSION_TABLE, metadata
from charter.trainer.store import migrate
from sqlalchemy import create_engine, inspect

pytestmark = pytest.mark.integration


def spec(name: str = "s") -> RunSpec:
    return RunSpec(name=name, algorithm="dpo", base_model="embedded")


def test_migrations_build_exactly_the_declared_schema_beside_the_ledger(ledger_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(normalise_url(ledger_url))
    migrate(engine)
    migrate(engine)  # a second start finds nothing to do
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
    migrate_ledger(engine)  # the review ledger in the same database: separate version tables
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "run_events", VERSION_TABLE, "labels", "accepted", "alembic_version"} <= tables
    engine.dispose()


def test_runs_and_events(ledger_url):
    clock = iter(float(t) for t in range(1000, 2000))
    store = run_store(ledger_url, clock=lambda: next(clock))
    run, created = store.create(spec("a"), executor="local", idempotency_key="k1")
    assert created and run.state == RunState.PENDING and run.id.startswith("r-")
    again, created = store.create(spec("other"), executor="local", idempotency_key="k1")
    assert not created and again.id == run.id and again.spec.name == "a"

    def start(r: Run):
        r.attempt = 1
        return [StateEvent(state=RunState.RUNNING)]

    run, _ = store.change(run.id, start, handle="h1", attempt=1, events_seen=0)
    assert run.state == RunState.RUNNING and run.started_at == 1001
    _, added = store.change(
        run.id,
        lambda r: [MetricsEvent(step=1, values={"loss": 0.5}), LogEvent(message="x")],
        events_seen=2,
    )
    assert [e.sequence for e in added] == [3, 4]
    run, _ = store.change(run.id, lambda r: [StateEvent(state=RunState.FAILED, reason="boom")])
    assert run.reason == "boom" and run.finished_at > 0
    record = store.record(run.id)
    assert (record.handle, record.attempt, record.events_seen) == ("h1", 1, 2)
    kinds = [type(e.kind) for e in store.events(run.id)]
    assert kinds == [StateEvent, StateEvent, MetricsEvent, LogEvent, StateEvent]
    assert [e.sequence for e in store.events(run.id, after=3)] == [4, 5]
    assert store.active() == []
    with pytest.raises(NotFound):
        store.get("r-missing")
    store.close()


def test_listing_pages_newest_first(ledger_url):
    clock = iter(float(t) for t in range(1000, 2000))
    store = run_store(ledger_url, clock=lambda: next(clock))
    ids = [store.create(spec(str(i)), executor="local")[0].id for i in range(7)]
    seen, token = [], ""
    while True:
        page, token = store.list(page_size=3, page_token=token)
        seen += [r.id for r in page]
        if not token:
            break
    assert seen == ids[::-1]
    assert [r.id for r in store.list(states=[RunState.PENDING])[0]] == ids[::-1]
    assert store.list(states=[RunState.SUCCEEDED])[0] == []
    with pytest.raises(InvalidArgument):
        store.list(page_token="not-a-token")
    store.close()

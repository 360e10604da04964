"""Continuous runs' pure parts: when a round closes (label count, time, whichever first, never
without a usable row), reading one round off a followed stream, round references (ID@N, ID@latest)
and the spec check of the `continuous` section."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from charter.core.errors import InvalidArgument
from charter.trainer.rounds import Published, RoundFolders, RoundTrigger, pick_round, read_round, round_ref
from charter.trainer.runs import (
    ContinuousTraining,
    DataSource,
    FileSource,
    LabelStreamSource,
    Resources,
    RunSpec,
)
from charter.trainer.spec import check

ROW = {"prompt": [], "chosen": [], "rejected": [], "p_chosen": 1.0}


def test_a_round_closes_on_the_label_count_or_the_time_whichever_first():
    trigger = RoundTrigger(labels=4, seconds=10.0)
    assert not trigger.closes(labels_read=3, rows=3, elapsed=9.9)
    assert trigger.closes(labels_read=4, rows=4, elapsed=0.1)  # by count
    assert trigger.closes(labels_read=1, rows=1, elapsed=10.0)  # by time
    assert trigger.closes(labels_read=4, rows=1, elapsed=0.0)  # ties count toward the labels read


def test_a_round_never_closes_without_a_usable_row():
    trigger = RoundTrigger(labels=2, seconds=1.0)
    assert not trigger.closes(labels_read=5, rows=0, elapsed=100.0)  # all ties, long past the time
    assert trigger.wait(rows=0, elapsed=100.0) is None  # so it waits for the next label, however long
    assert trigger.wait(rows=0, elapsed=0.25) == pytest.approx(0.75)


def test_a_round_read_again_needs_more_rows_than_it_had():
    """A round whose rows the trainer could not use is read again needing one row more (min_rows)."""
    trigger = RoundTrigger(labels=4, seconds=1.0, min_rows=3)
    assert not trigger.closes(labels_read=4, rows=2, elapsed=100.0)  # count and time both reached
    assert trigger.wait(rows=2, elapsed=100.0) is None
    assert trigger.closes(labels_read=5, rows=3, elapsed=0.0)
    with pytest.raises(ValueError):
        RoundTrigger(labels=4, min_rows=0)


def test_one_trigger_alone():
    by_count, by_time = RoundTrigger(labels=3), RoundTrigger(seconds=5.0)
    assert not by_count.closes(labels_read=2, rows=2, elapsed=1e9) and by_count.closes(3, 3, 0.0)
    assert by_count.wait(rows=1, elapsed=1e9) is None
    assert not by_time.closes(labels_read=10**6, rows=10**6, elapsed=4.9) and by_time.closes(1, 1, 5.0)
    for bad in ({}, {"labels": -1, "seconds": 1.0}, {"seconds": float("nan")}):
        with pytest.raises(ValueError):
            RoundTrigger(**bad)


class Feed:
    """A followed stream a test feeds by hand: (sequence, row or None for a tie) pairs."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sequence = 0

    def add(self, n: int, *, tie: bool = False) -> None:
        for _ in range(n):
            self.sequence += 1
            self.queue.put_nowait((self.sequence, None if tie else {**ROW, "seq": self.sequence}))

    async def __aiter__(self) -> AsyncIterator:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item


async def test_read_round_stops_at_the_count_and_the_next_round_starts_after_it():
    feed = Feed()
    feed.add(7)
    first = await read_round(feed, 0, RoundTrigger(labels=3))
    assert (first.cursor_start, first.cursor_end, first.labels_read) == (0, 3, 3)
    assert [r["seq"] for r in first.rows] == [1, 2, 3]


async def test_read_round_closes_on_time_with_what_came_and_waits_past_it_for_a_usable_row():
    feed = Feed()
    feed.add(2)
    data = await asyncio.wait_for(read_round(feed, 0, RoundTrigger(labels=100, seconds=0.2)), 5)
    assert (data.cursor_end, len(data.rows)) == (2, 2)  # the time closed it

    feed.add(2, tie=True)
    task = asyncio.ensure_future(read_round(feed, 2, RoundTrigger(labels=100, seconds=0.05)))
    await asyncio.sleep(0.3)
    assert not task.done()  # time is up, but two ties are nothing to train on
    feed.add(1)
    data = await asyncio.wait_for(task, 5)
    assert (data.cursor_start, data.cursor_end, data.labels_read, len(data.rows)) == (2, 5, 3, 1)
    assert data.skipped == {"tie": 2}


async def test_read_round_returns_when_the_stream_ends():
    feed = Feed()
    feed.add(1)
    feed.queue.put_nowait(None)
    data = await asyncio.wait_for(read_round(feed, 0, RoundTrigger(labels=10)), 5)
    assert (data.cursor_end, len(data.rows)) == (1, 1)


async def test_read_round_raises_the_streams_error():
    async def broken() -> AsyncIterator:
        yield 1, dict(ROW)
        raise ConnectionError("the review service refused the token")

    with pytest.raises(ConnectionError, match="refused"):
        await asyncio.wait_for(read_round(broken(), 0, RoundTrigger(labels=10)), 5)


def test_round_references():
    assert round_ref("r-abc") == ("r-abc", None)
    assert round_ref("r-abc@3") == ("r-abc", "3") and round_ref("r-abc@latest") == ("r-abc", "latest")
    for bad in ("r-abc@0", "r-abc@last", "r-abc@"):
        with pytest.raises(ValueError):
            round_ref(bad)
    rounds = [Published(n, 0, n, 1, 1, f"/m{n}", n) for n in (1, 2, 3)]
    assert pick_round(rounds, None).round == pick_round(rounds, "latest").round == 3
    assert pick_round(rounds, "2").model_dir == "/m2" and pick_round(rounds, "4") is None
    assert pick_round([], "latest") is None


def test_published_rounds_are_read_in_order_without_gaps(tmp_path):
    folders = RoundFolders(tmp_path)
    for n in (1, 2, 4):  # round 3 was never published: round 4's file is not one of the run's rounds
        folders.folder(n).mkdir(parents=True)
        (folders.folder(n) / "published.json").write_text(Published(n, n - 1, n, 1, 1, "m", n).to_json())
    assert [p.round for p in folders.published()] == [1, 2]


def continuous_spec(**changes) -> RunSpec:
    spec = RunSpec(
        name="c", algorithm="dpo", base_model="embedded",
        data=DataSource(label_stream=LabelStreamSource(address="review:50054")),
        hyperparameters={"max_steps": 2}, continuous=ContinuousTraining(round_labels=8, max_rounds=2),
    )  # fmt: skip
    return replace(spec, **changes)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"algorithm": "sft"}, "spec.continuous"),
        ({"algorithm": "ppo", "reward_model": "/rm"}, "spec.continuous"),
        ({"data": DataSource(files=FileSource(paths=[__file__]))}, "spec.data"),
        (
            {"data": DataSource(label_stream=LabelStreamSource(address="r:1", to_cursor=40))},
            "spec.data.label_stream.to_cursor",
        ),
        ({"continuous": ContinuousTraining()}, "spec.continuous.round_labels"),
        ({"resources": Resources(gpus=2, processes=2)}, "spec.resources.processes"),
        ({"continuous": ContinuousTraining(round_seconds=-1.0)}, "spec.continuous.round_seconds"),
    ],
)
def test_invalid_continuous_specs_name_the_field(changes, field):
    with pytest.raises(InvalidArgument) as err:
        check(continuous_spec(**changes))
    assert err.value.field == field and str(err.value).startswith(field)


def test_a_continuous_reward_model_spec_passes_the_check():
    checked = check(continuous_spec(algorithm="reward-model"))
    assert checked.continuous == ContinuousTraining(round_labels=8, max_rounds=2)

"""Continuous runs: the round trigger, reading one round's labels off a followed stream, and the
rounds' folders — the pure part (no models, no gRPC; the worker's loop is
`charter.app.trainer_continuous`).

A continuous run follows the accepted-label stream from `from_cursor` with no end. Round N reads the
stream from round N-1's `cursor_end` and **closes** when

- `round_labels` labels have been read (ties included: they move the cursor), or
- `round_seconds` have passed since the round began reading,

whichever comes first, but never before it holds one usable (non-tie) row (`min_rows`): a round whose
time is up with nothing to train on closes at the next usable label. A round none of whose rows the
trainer can use (TRL drops rows longer than `max_length`) is read again from the same cursor with
`min_rows` one more than it had, until one fits. The round then trains on its own rows only,
starting from round N-1's model, and is published as round N.

Exactly once: a round's rows are cached in its folder before it trains (`rounds/round-NNNN/data`), so
a worker killed in the middle of a round trains that round again on the same rows (from its last
checkpoint); a round is published by writing `published.json` after its model, so a round is either
published with its model or not at all; and round N+1 always starts from round N's recorded
`cursor_end`. Labels read past a round's close are not used by it — the next round reads them again
from the ledger.

Example::

    trigger = RoundTrigger(labels=64, seconds=600)
    data = await read_round(labels, from_cursor=120, trigger=trigger)
    data.cursor_start, data.cursor_end  # (120, 184) when 64 labels came within 10 minutes
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from charter.trainer.data import PreferenceData, StreamRow

ROUNDS_DIR = "rounds"
PUBLISHED = "published.json"
"""Written (atomically) into a round's folder once its model is saved: the round is published."""


@dataclass(frozen=True)
class RoundTrigger:
    """When a round closes; 0 turns a trigger off (at least one must be on). `min_rows`: the usable
    rows a round needs before either trigger may close it."""

    labels: int = 0
    seconds: float = 0.0
    min_rows: int = 1

    def __post_init__(self) -> None:
        if self.labels < 0 or self.min_rows < 1 or not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError(
                f"triggers must be >= 0 and min_rows >= 1 ({self.labels=}, {self.seconds=}, {self.min_rows=})"
            )
        if not self.labels and not self.seconds:
            raise ValueError("a round needs a label count or a time to close on")

    def closes(self, labels_read: int, rows: int, elapsed: float) -> bool:
        """Whether a round that has read `labels_read` labels (`rows` of them usable) in `elapsed`
        seconds is complete."""
        if rows < self.min_rows:
            return False
        by_count = self.labels > 0 and labels_read >= self.labels
        by_time = self.seconds > 0 and elapsed >= self.seconds
        return by_count or by_time

    def wait(self, rows: int, elapsed: float) -> float | None:
        """How long to wait for the next label before looking again (None: until it comes)."""
        if not self.seconds or rows < self.min_rows and elapsed >= self.seconds:
            return None
        return max(self.seconds - elapsed, 0.0)


async def read_round(
    labels: AsyncIterable[StreamRow],
    from_cursor: int,
    trigger: RoundTrigger,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> PreferenceData:
    """One round's labels from a followed stream of (sequence, row | None) read after `from_cursor`;
    returns when `trigger` closes the round, or when the stream ends (then possibly with no rows); an
    error of the stream is raised. The stream is read by a task into a queue, so waiting for the time
    trigger never cuts a read."""
    queue: asyncio.Queue[StreamRow | None] = asyncio.Queue(maxsize=256)
    failed: list[BaseException] = []

    async def pump() -> None:
        try:
            async for item in labels:
                await queue.put(item)
        except Exception as err:  # the reader raises it (a cancelled pump puts nothing)
            failed.append(err)
        await queue.put(None)  # the stream ended, or failed

    task = asyncio.ensure_future(pump())
    data = PreferenceData([], cursor_start=from_cursor, cursor_end=from_cursor)
    start = clock()
    try:
        while not trigger.closes(data.labels_read, len(data.rows), clock() - start):
            try:
                item = await asyncio.wait_for(queue.get(), trigger.wait(len(data.rows), clock() - start))
            except TimeoutError:
                continue
            if item is None:
                if failed:
                    raise failed[0]
                break
            sequence, row = item
            data.cursor_end = sequence
            data.labels_read += 1
            if row is None:
                data.skipped["tie"] = data.skipped.get("tie", 0) + 1
            else:
                data.rows.append(row)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return data


@dataclass(frozen=True)
class Published:
    """What a round's `published.json` records (and its `round` event carries)."""

    round: int
    cursor_start: int
    cursor_end: int
    rows: int
    labels_read: int
    model_dir: str
    step: int
    skipped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class RoundFolders:
    """A continuous run's rounds under DIR/rounds: `round-0001/` holds `data/` (the round's cached
    rows), `checkpoints/`, `model/` and, once published, `published.json`."""

    def __init__(self, run_dir: Path) -> None:
        self.root = Path(run_dir) / ROUNDS_DIR

    def folder(self, n: int) -> Path:
        return self.root / f"round-{n:04d}"

    def published(self) -> list[Published]:
        """The published rounds, in order; they are numbered 1, 2, ... without a gap."""
        out: list[Published] = []
        while (path := self.folder(len(out) + 1) / PUBLISHED).exists():
            out.append(Published(**json.loads(path.read_text(encoding="utf-8"))))
        return out


def round_ref(value: str) -> tuple[str, str | None]:
    """`ID@ROUND` -> (ID, ROUND) with ROUND a number or "latest"; `ID` -> (ID, None). Raises
    ValueError for anything else after the `@`."""
    run_id, at, which = value.partition("@")
    if not at:
        return value, None
    if which != "latest" and not (which.isdigit() and int(which) >= 1):
        raise ValueError(f"{value!r}: a round is a number >= 1 or 'latest' (ID@3, ID@latest)")
    return run_id, which


def pick_round(rounds: list[Any], which: str | None) -> Any | None:
    """The round `which` names ("latest", a number, None: latest) among `rounds` (objects with a
    `round` attribute, oldest first); None when there is no such round."""
    if not rounds:
        return None
    if which is None or which == "latest":
        return rounds[-1]
    return next((r for r in rounds if r.round == int(which)), None)

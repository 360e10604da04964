"""Progress where there is no terminal: lines at intervals with done/total, rate and ETA; on a terminal
rich's live bar and no lines."""

from __future__ import annotations

import io
import time

import pytest
from charter.cli.progress import CommandProgress, duration, interval_seconds, line
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn


def progress(terminal: bool, interval: float = 0.05) -> tuple[CommandProgress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    return CommandProgress(*columns, console=console, interval=interval, unit="pairs"), out


def test_without_a_terminal_lines_come_at_intervals_and_once_at_the_end() -> None:
    """Also while nothing moves (one long batch): a line per interval says the time elapsed."""
    bar, out = progress(terminal=False)

    def wait_for(prefix: str, count: int) -> None:  # polled: a busy machine delays the ticks
        deadline = time.monotonic() + 10
        while sum(x.startswith(prefix) for x in out.getvalue().splitlines()) < count:
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.01)

    with bar:
        task = bar.add_task("judging", total=10)
        wait_for("judging: 0/10 (0%)", 2)  # nothing done yet, still a line per interval
        bar.advance(task, 4)
        wait_for("judging: 4/10 (40%)", 1)
        bar.advance(task, 6)
    lines = out.getvalue().splitlines()
    assert "elapsed" in lines[0]
    middle = next(x for x in lines if x.startswith("judging: 4/10 (40%)"))
    assert " pairs/s" in middle and "ETA" in middle
    assert lines[-1].startswith("judging: 10/10 (100%)") and "ETA" not in lines[-1]
    assert "\x1b[" not in out.getvalue()  # plain text for a log file


def test_on_a_terminal_the_bar_is_rich_and_there_are_no_lines() -> None:
    bar, out = progress(terminal=True)
    with bar:
        task = bar.add_task("judging", total=4)
        bar.advance(task, 4)
        time.sleep(0.12)
    assert "judging: 4/4" not in out.getvalue() and "4/4" in out.getvalue()


def test_the_rate_leaves_out_what_an_earlier_run_did() -> None:
    bar, _ = progress(terminal=False)
    task_id = bar.add_task("sl-cai", total=100, resumed_at=90)
    bar.update(task_id, completed=90)
    task = bar.tasks[0]
    assert "pairs/s" not in line(task, "pairs")  # nothing done by this run yet: no rate, no ETA
    time.sleep(0.2)
    bar.advance(task_id, 5)
    text = line(bar.tasks[0], "pairs")
    rate = float(text.split(", ")[1].split()[0])
    assert rate == pytest.approx(5 / bar.tasks[0].elapsed, rel=0.2)


def test_interval_and_duration_formats(monkeypatch) -> None:
    monkeypatch.setenv("CHARTER_PROGRESS_INTERVAL", "2.5")
    assert interval_seconds() == 2.5
    for bad in ("x", "-1", "0"):
        monkeypatch.setenv("CHARTER_PROGRESS_INTERVAL", bad)
        assert interval_seconds() == 30.0
    assert (duration(5), duration(125), duration(3725)) == ("5s", "2m05s", "1h02m05s")

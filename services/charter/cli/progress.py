"""Progress for long commands: a live bar on a terminal, and where there is none (a CI log, a pod's
output, a file) a line per task at intervals — done/total, rate, ETA — so a long run is never silent."""

from __future__ import annotations

import os
import threading
from typing import Any

from rich.console import Console
from rich.progress import Progress, Task, TaskID

INTERVAL_ENV = "CHARTER_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def interval_seconds() -> float:
    """Seconds between progress lines when there is no terminal (`CHARTER_PROGRESS_INTERVAL`)."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        value = DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (
        f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )


def items_per_second(task: Task) -> float | None:
    """What this run finished per second since it started (a resumed job's earlier items,
    `resumed_at`, do not count); None before it finished any."""
    fresh = task.completed - task.fields.get("resumed_at", 0)
    return fresh / task.elapsed if task.elapsed and fresh > 0 else None


def line(task: Task, unit: str = "items") -> str:
    """`name: 12/32 (38%), 0.41 items/s, ETA 49s` — what the bar shows, as one line of text. The rate
    counts what this run did (a resumed job's earlier items, `resumed_at`, do not count)."""
    done = task.completed
    total = task.total
    head = f"{task.description}: {int(done)}" + (
        f"/{int(total)} ({100 * done / total:.0f}%)" if total else ""
    )
    elapsed = task.elapsed or 0.0
    rate = items_per_second(task)
    if rate is None:
        return f"{head}, {duration(elapsed)} elapsed"
    text = f"{head}, {rate:.3g} {unit}/s, {duration(elapsed)} elapsed"
    if total and done < total:
        text += f", ETA {duration((total - done) / rate)}"
    return text


class CommandProgress(Progress):
    """A rich `Progress` that, when its console is not a terminal, draws nothing live and instead
    prints `line(task)` for every started task every `interval` seconds, and once more at stop for
    each that moved since. On a terminal it is exactly rich's bar."""

    def __init__(self, *columns: Any, console: Console, interval: float | None = None, unit: str = "items"):
        self.lines = not console.is_terminal
        super().__init__(*columns, console=console, disable=self.lines)
        self.interval = interval_seconds() if interval is None else interval
        self.unit = unit
        self._printed: dict[TaskID, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.live.is_started or self._thread is not None

    def start(self) -> None:
        if not self.lines:
            super().start()
        elif self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="progress-lines", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if not self.lines:
            super().stop()
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.print_lines(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.print_lines()

    def print_lines(self, final: bool = False) -> None:
        """A line for each started task: at every interval (also when its count has not moved: a
        long batch or an engine still starting shows as time elapsed), and at the end for each whose
        count changed since its last line."""
        with self._lock:
            tasks = [t for t in self._tasks.values() if t.started and t.total != 0]
        for task in tasks:
            if final and self._printed.get(task.id) == task.completed:
                continue
            self._printed[task.id] = task.completed
            self.console.print(line(task, self.unit), highlight=False, soft_wrap=True)

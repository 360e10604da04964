"""A command's child processes end with it.

vLLM runs its engine core in a child process, and a trainer run its worker; when a `charter` command
is terminated (SIGTERM from a shell, a job runner or Kubernetes), Python's default is to die at once,
running no `finally` block, and those children live on as orphans holding the model's memory and a
core. `terminate_as_exit` turns SIGTERM into `SystemExit(143)` so the command unwinds like an
interrupt (engines close in their `finally` blocks), and `end_descendants` ends whatever is still
running below this process when the command leaves: SIGTERM first, then SIGKILL after a grace period.

Linux only (it reads /proc); elsewhere both are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from types import FrameType

__all__ = ["descendants", "end_descendants", "terminate_as_exit"]

EXIT_ON_SIGTERM = 128 + signal.SIGTERM


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2:
            out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one), children first."""
    root = os.getpid() if pid is None else pid
    parents = _parents()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    out: list[int] = []
    frontier = [root]
    while frontier:
        below = [c for p in frontier for c in children.get(p, ()) if c != root]
        out.extend(below)
        frontier = below
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2 :][:1] != "Z"  # a zombie has ended; its parent reaps it


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_descendants(grace_seconds: float = 5.0) -> list[int]:
    """SIGTERM every process below this one, SIGKILL those still running after `grace_seconds`; the
    pids that were running (empty when there were none)."""
    pids = [p for p in descendants() if _alive(p)]
    if not pids:
        return []
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    _signal([p for p in pids if _alive(p)], signal.SIGKILL)
    return pids


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_ON_SIGTERM)


def terminate_as_exit() -> None:
    """SIGTERM raises SystemExit(143) in the main thread (a command that installs its own handler,
    such as `charter serve`'s drain, replaces this one)."""
    signal.signal(signal.SIGTERM, _exit)

"""`charter.core.processes`: what runs below a process is found and ended, even a child that ignores
SIGTERM (as vLLM's engine core did when its parent was gone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from charter.core import processes

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"


def test_descendants_finds_grandchildren() -> None:
    # a shell that starts a grandchild which waits on stdin
    shell = subprocess.Popen(["sh", "-c", "sleep 120 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        below: list[int] = []
        while time.monotonic() < deadline and not below:
            below = processes.descendants(shell.pid)
            time.sleep(0.05)
        assert len(below) == 1 and below[0] != shell.pid
        assert shell.pid in processes.descendants() and below[0] in processes.descendants()
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()


# run in a process of its own: end_descendants() in the test process would end whatever else the
# test session runs below it (a shared engine's core)
END_THEM = f"""
import json, subprocess, sys, time
from charter.core import processes
child = subprocess.Popen([sys.executable, "-c", {IGNORES_SIGTERM!r}], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
started = time.monotonic()
ended = processes.end_descendants(grace_seconds=0.5)
code = child.wait(timeout=5)
print(json.dumps({{"child": child.pid, "ended": ended, "code": code, "seconds": time.monotonic() - started,
                  "after": processes.end_descendants()}}))
"""


def test_end_descendants_kills_a_child_that_ignores_sigterm() -> None:
    out = subprocess.run([sys.executable, "-c", END_THEM], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ended"] == [result["child"]]
    assert result["code"] == -signal.SIGKILL  # SIGTERM was ignored: SIGKILL after the grace period
    assert result["seconds"] < 5
    assert result["after"] == []  # nothing left (the reaped child is gone)


def test_sigterm_raises_system_exit_143() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        processes.terminate_as_exit()
        with pytest.raises(SystemExit) as exited:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode boundary
        assert exited.value.code == 143
    finally:
        signal.signal(signal.SIGTERM, previous)

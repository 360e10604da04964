"""The chaos test's processes: each restarted after it is killed, as a supervisor would; unary calls
retried while a service is away; a trainer run's worker processes found by their command line."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import grpc

from tests.support import ROOT
from tests.support.process import LoggedProcess

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(fn, request, metadata, attempts: int = 120):
    """A unary call retried while the service is away (it is being restarted)."""
    for _ in range(attempts):
        try:
            return fn(request, metadata=metadata, timeout=10, wait_for_ready=True)
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE:
                raise
            time.sleep(0.25)
    raise AssertionError(f"{fn} stayed unavailable")


class Supervised:
    """A process the test restarts after killing it, as Kubernetes restarts a container."""

    def __init__(self, name: str, args: list[str], ready: str | None, env: dict[str, str]) -> None:
        self.name, self.args, self.ready, self.env = name, args, ready, env
        self.proc: LoggedProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.proc = LoggedProcess(self.args, cwd=ROOT, env=self.env)
        if self.ready is not None:
            try:
                self.proc.wait_for(self.ready, timeout=90)
            except AssertionError:
                self.proc.stop()
                raise
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL the process alone (a trainer's worker runs in a session of its own and survives)."""
        if self.proc is not None and self.proc.proc.poll() is None:
            os.kill(self.proc.proc.pid, signal.SIGKILL)
            self.proc.proc.wait(timeout=10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def worker_pids(run_id: str) -> list[int]:
    """The trainer worker processes of a run (their command line names its folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        worker = any(b"trainer_worker" in part for part in cmdline) and b"/bin/sh" not in cmdline[0]
        if worker and any(run_id.encode() in part for part in cmdline):
            pids.append(int(entry.name))
    return pids

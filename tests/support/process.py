"""Running a Charter server as a child process and reading its JSON log."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Any


class LoggedProcess:
    """A child process whose stderr is JSON log lines, collected in a background thread."""

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        # its own process group: stop() takes the children with it (vLLM's engine core is one, and
        # would outlive a killed server holding gigabytes and a core)
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
        )
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            self._queue.put(event)

    def wait_for(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("event") == name:
                return event
        while time.monotonic() < deadline:
            try:
                event = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    break
                continue
            if event.get("event") == name:
                return event
        raise AssertionError(f"no {name!r} log event; stderr so far:\n{''.join(self.raw)}")

    def stop(self) -> None:
        """Kill the process and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)

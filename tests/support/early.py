"""Long single-threaded checks that run in the background while the deploy tier runs.

The deploy tier (tests/deploy) is mostly one thread waiting on pip, imports and child servers: two
cores run at about 40% there. Two other long single-threaded checks of the suite run beside it, one
after the other, on the idle core: the service image's Python environment (tests/deploy/test_image_env.py)
and `mypy --strict` over the package (tests/unit/test_types.py). tests/deploy/conftest.py starts those
whose test is selected and waits for them before the tier ends, so they never compete with the tiers
that run the model. The test that asserts on a check reads its result with `result(name)`; where the
check was not started (the test run alone), `result` starts it and waits, as the test did before.
Same commands, same timeouts, same assertions."""

from __future__ import annotations

import atexit
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT


@dataclass(frozen=True)
class Check:
    argv: tuple[str, ...]  # "{out}" stands for a fresh file path the check may write its JSON to
    timeout: float
    test: str  # the node id of the test that asserts on it


@dataclass(frozen=True)
class Done:
    process: subprocess.CompletedProcess[str]
    out: Path


MYPY = str(Path(sys.executable).with_name("mypy"))
CHECKS = {
    "service-image": Check(
        (sys.executable, "scripts/image_env.py", "check", "service", "--json", "{out}"),
        timeout=840,
        test="tests/deploy/test_image_env.py::test_service_image_environment_builds_and_serves",
    ),
    "mypy": Check(
        (MYPY, "--config-file", str(ROOT / "pyproject.toml")),
        timeout=1750,
        test="tests/unit/test_types.py::test_the_package_passes_mypy_strict",
    ),
}


class Background:
    """Checks run one at a time, in the order they were asked for, on one daemon thread."""

    def __init__(self) -> None:
        self._futures: dict[str, Future[Done]] = {}
        self._queue: queue.Queue[tuple[str, Future[Done]]] = queue.Queue()
        self._current: subprocess.Popen[str] | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="charter-early-"))
        self._thread = threading.Thread(target=self._work, name="early-checks", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        atexit.register(shutil.rmtree, self._scratch, True)

    def start(self, name: str) -> Future[Done]:
        # asked for from the test session's thread only; the worker thread only runs what is queued
        if name not in self._futures:
            self._futures[name] = Future()
            self._queue.put((name, self._futures[name]))
        return self._futures[name]

    def result(self, name: str) -> Done:
        return self.start(name).result()

    def wait(self) -> None:
        """Until every check asked for has ended (passed or not: its test reads how)."""
        for future in list(self._futures.values()):
            future.exception()

    def stop(self) -> None:
        """End the check that is running (at exit: an interrupted session)."""
        proc = self._current
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    def _work(self) -> None:
        while True:
            name, future = self._queue.get()
            check, out = CHECKS[name], self._scratch / f"{name}.json"
            argv = [arg.replace("{out}", str(out)) for arg in check.argv]
            try:
                proc = subprocess.Popen(  # its own process group: stop() ends its children too
                    argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    start_new_session=True,
                )  # fmt: skip
                self._current = proc
                try:
                    stdout, stderr = proc.communicate(timeout=check.timeout)
                except subprocess.TimeoutExpired:
                    self.stop()
                    stdout, stderr = proc.communicate()
                    raise AssertionError(
                        f"{' '.join(argv)} ran past {check.timeout:.0f} s:\n{(stdout + stderr)[-6000:]}"
                    ) from None
                future.set_result(
                    Done(subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), out)
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the test that reads the result
                future.set_exception(exc)
            finally:
                self._current = None


_background: Background | None = None


def background() -> Background:
    global _background
    if _background is None:
        _background = Background()
    return _background


def result(name: str) -> Done:
    return background().result(name)

"""SIGTERM to a `charter` command ends its engine's child processes too (issue 18, failure
behaviour): `charter generate` on vLLM runs the engine core in a child process, which outlived a
terminated command, orphaned, holding the model and a core."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from charter.core.processes import descendants

from tests.support import ROOT, subprocess_env, tool

pytestmark = pytest.mark.e2e


def _wait_for_children(proc: subprocess.Popen[str], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"charter generate ended early: {proc.communicate()}"
        below = descendants(proc.pid)
        if below:
            return below
        time.sleep(0.5)
    raise AssertionError("charter generate started no child process")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read()
    except OSError:
        return False
    return state[state.rfind(")") + 2 :][:1] != "Z"


def test_sigterm_to_generate_ends_the_vllm_engine_core() -> None:
    pytest.importorskip("vllm")
    proc = subprocess.Popen(
        [
            tool("charter"),
            "generate",
            "Write a long story about a lighthouse keeper.",
            "--engine",
            "vllm",
            "--max-tokens",
            "1500",
        ],  # fmt: skip
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, for the clean-up below
    )
    children: list[int] = []
    try:
        children = _wait_for_children(proc, timeout=240)
        time.sleep(3)  # well into the engine core's start-up (or the generation)
        children = sorted(set(children) | set(descendants(proc.pid)))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(p) for p in children):
            time.sleep(0.2)
        left = [p for p in children if _running(p)]
        assert not left, f"still running after SIGTERM to charter generate: {left}"
        assert proc.returncode == 143, err[-2000:]  # it unwound (engines closed), not killed outright
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in [p for p in children if _running(p)]:  # the test failed: leave nothing behind
            os.kill(pid, signal.SIGKILL)

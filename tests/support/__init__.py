"""Paths and helpers shared by the test tiers."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
CONSTITUTIONS = ROOT / "constitutions"
LLM_SWARM = SHARED_DATA / "constitutions" / "llm-swarm"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A command installed in the test environment (the dev extra installs them all)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run `make test` (installs the dev extra)")
    return found


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no stray CHARTER_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env.update(extra)
    return env

"""Shared fixtures. The reference data in ../shared/data is required: a missing file is a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import CONSTITUTIONS, SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"reference data folder {SHARED_DATA} is missing (it sits beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def constitution_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped constitutions, safe to edit."""
    target = tmp_path / "constitutions"
    shutil.copytree(CONSTITUTIONS, target)
    return target

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


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path):
    """The review ledger's database: a SQLite file, then a fresh database on the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    from tests.support.review import postgres_database

    with postgres_database() as url:
        yield url

"""The deploy checks' modules (scripts/check_deploy.py and its two helpers) and renders of deploy/."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.support import ROOT, early

SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="package", autouse=True)
def early_checks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Starts the selected tests' long single-threaded checks (tests/support/early.py) beside this
    tier, and waits for them before the tier ends."""
    selected = {item.nodeid for item in request.session.items}
    started = [name for name, check in early.CHECKS.items() if check.test in selected]
    for name in started:
        early.background().start(name)
    yield
    if started:
        early.background().wait()


@pytest.fixture(scope="session")
def checker() -> ModuleType:
    """scripts/check_deploy.py as a module (it imports its helpers from scripts/)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import check_deploy

    return check_deploy


@pytest.fixture(scope="session")
def renders(checker: ModuleType) -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered once with kubectl kustomize, as objects."""
    kustomize = checker.find_kustomize()
    return {
        str(target.relative_to(checker.DEPLOY)): checker.render(kustomize, target)[1]
        for target in checker.targets()
    }


@pytest.fixture
def render_of(renders: dict[str, list[dict[str, Any]]]) -> Callable[[str], list[dict[str, Any]]]:
    """A private copy of one render, safe to break."""
    return lambda name: copy.deepcopy(renders[name])

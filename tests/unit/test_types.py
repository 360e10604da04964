"""`mypy --strict` passes on services/charter, with pyproject.toml's [tool.mypy] configuration (the
same run as `make lint`).

The cache is mypy's default `.mypy_cache` in the checkout (ignored by git): a warm run takes about
5 s. A cold one (a clean clone, or the first run after installing) also analyses the typed
third-party packages it imports (torch, transformers, vLLM, TRL, grpc, SQLAlchemy, ...): measured
cold with an empty `--cache-dir`, 74-127 s on 2 cores at load 5 (other tests running beside it),
and about 13 minutes for the very first run on that machine while a CPU-bound benchmark held both
cores. The timeout leaves room above that. In the whole suite it runs in the background beside the
deploy tier (tests/support/early.py); alone, it runs here."""

from __future__ import annotations

import pytest

from tests.support import early


@pytest.mark.timeout(1800)
def test_the_package_passes_mypy_strict() -> None:
    done = early.result("mypy").process  # mypy --config-file pyproject.toml, 1750 s at most
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success: no issues found"), done.stdout

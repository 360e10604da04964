"""The layer order (docs/architecture.md) holds, and the contract really catches an import that
breaks it: a domain package reaching up into a pipeline, a sibling, or gRPC."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the packages under `root/services`, with `root/pyproject.toml`'s contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(root / "services"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_the_tree_keeps_the_layer_order() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for package in ("charter", "charter_proto"):
        shutil.copytree(ROOT / "services" / package, root / "services" / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return root


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("judge/uses_pipeline.py", "from charter.pipelines import runner", "imports run downwards only"),
        ("evaluation/uses_pipeline.py", "from charter.pipelines import rlaif", "imports run downwards only"),
        ("review/uses_judge.py", "from charter.judge import labels", "imports run downwards only"),
        ("core/uses_app.py", "import charter.app.catalog", "imports run downwards only"),
        ("trainer/uses_proto.py", "from charter_proto.trainer.v1 import trainer_pb2", "no generated code"),
        ("critic/uses_grpc.py", "import grpc", "no gRPC"),
        ("servicers/judge.py", "from charter.servicers import review", "do not import each other"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(copy: Path, module: str, line: str, contract: str) -> None:
    target = copy / "services" / "charter" / module
    before = target.read_text() if target.exists() else None
    target.write_text((before or '"""A forbidden import, added by the test."""\n') + f"\n{line}\n")
    try:
        done = lint_imports(copy)
    finally:
        if before is None:
            target.unlink()
        else:
            target.write_text(before)
    assert done.returncode != 0, done.stdout
    broken = [ln for ln in done.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), done.stdout
    assert target.stem in done.stdout  # the report names the offending module

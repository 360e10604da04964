"""`charter run` on `kind: rlaif` as a user meets it before any model loads: the help names the kind,
--generator/--judge and --limit are refused with what to change, an incomplete remote services
section and a bad gate name their field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, subprocess_env, tool

pytestmark = pytest.mark.e2e


def charter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("charter"), *args], cwd=ROOT, env=subprocess_env(COLUMNS="200"), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def spec(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "pipelines" / "rlaif.yaml").read_text()) | changes
    data["output"] = str(tmp_path / "out")
    path = tmp_path / "rlaif.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_help_names_the_rlaif_kind() -> None:
    done = charter("run", "--help")
    assert (
        done.returncode == 0 and "rlaif: iterated RLAIF" in done.stdout and "remote mode from the spec" in done.stdout
    )


@pytest.mark.parametrize(
    ("args", "changes", "message"),
    [
        (("--judge", "judge:50051"), {}, "--generator/--judge: services: kind rlaif takes its service addresses "
                                         "from the spec"),
        (("--limit", "4"), {}, "--limit: kind rlaif takes its prompts per iteration from prompts.per_iteration"),
        ((), {"services": {"mode": "remote", "judge": "judge:50051"}}, "services: Value error, mode remote needs "
                                                                       "the address (host:port) of the generator, "
                                                                       "review, trainer services"),
        ((), {"gates": {"harmlessness_gain": 1.0}}, "gates.harmlessness_gain: unknown key"),
    ],
)  # fmt: skip
def test_rlaif_refuses_what_it_cannot_do_with_one_line(
    tmp_path: Path, args: tuple, changes: dict, message: str
) -> None:
    done = charter("run", str(spec(tmp_path, **changes)), *args)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written

"""`charter export`, `charter review migrate` and `charter serve review` as a user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from charter_proto.common.v1 import label_pb2

from tests.support import ROOT, subprocess_env, tool
from tests.support.process import LoggedProcess
from tests.support.review import ledger_with_overrides, postgres_database

pytestmark = pytest.mark.e2e


def charter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("charter"), *args], cwd=ROOT, capture_output=True, text=True, env=subprocess_env(), timeout=120
    )


@pytest.fixture
def ledger_file(tmp_path: Path) -> tuple[str, list[label_pb2.PreferenceLabel]]:
    """Six auto-accepted labels, one the AI preferred A and a person overrode to B, one a person tied."""
    url = f"sqlite:///{tmp_path / 'review.db'}"
    return url, ledger_with_overrides(url)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_formats_apply_human_overrides(tmp_path: Path, ledger_file) -> None:
    url, labels = ledger_file
    trl = tmp_path / "trl.jsonl"
    result = charter("export", "--database", url, "--format", "trl-preference", "--out", str(trl))
    assert result.returncode == 0, result.stderr
    assert "wrote 7 rows (8 accepted labels" in result.stdout
    by_id = {r["label_id"]: r for r in rows(trl)}
    assert len(by_id) == 7  # the tie has no chosen response
    overridden = by_id[labels[6].id]
    assert overridden["label_source"] == "human" and overridden["human_reviewers"] == ["alice"]
    assert overridden["chosen"][0]["content"] == labels[6].response_b  # the person's choice, not the AI's
    assert overridden["p_chosen"] == 1.0 and overridden["ai_p_chosen"] == pytest.approx(0.05)
    auto = by_id[labels[0].id]
    assert auto["label_source"] == "ai" and auto["chosen"][0]["content"] == labels[0].response_a
    assert auto["p_chosen"] == pytest.approx(0.95) and auto["prompt"][-1]["role"] == "user"
    assert auto["constitution_id"] == "harmless" and auto["judge_model"] == "SmolLM2-135M-Instruct"

    full = tmp_path / "all.jsonl"
    assert charter("export", "--database", url, "--format", "jsonl", "--out", str(full)).returncode == 0
    records = rows(full)
    assert [r["sequence"] for r in records] == sorted(r["sequence"] for r in records) and len(records) == 8
    tie = next(r for r in records if r["label_id"] == labels[7].id)
    assert tie["choice"] == "tie" and tie["human_decisions"][0]["comment"] == "checked by hand"
    assert tie["ai"]["choice"] == "A" and tie["provenance"]["run_id"] == "test-run"

    parquet = tmp_path / "trl.parquet"
    human_only = charter(
        "export", "--database", url, "--format", "parquet", "--source", "human", "--out", str(parquet)
    )
    assert human_only.returncode == 0, human_only.stderr
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(parquet), split="train")
    assert len(ds) == 1 and {"prompt", "chosen", "rejected", "p_chosen"} <= set(ds.column_names)


def test_export_mistakes_are_one_line(tmp_path: Path, ledger_file) -> None:
    url, _ = ledger_file
    bad = charter("export", "--database", url, "--source", "robot", "--out", str(tmp_path / "x.jsonl"))
    assert bad.returncode == 1 and "--source: unknown source 'robot'" in bad.stderr
    follow = charter("export", "--database", url, "--follow", "--out", str(tmp_path / "x.jsonl"))
    assert follow.returncode == 1 and "need --review" in follow.stderr
    no_token = charter("export", "--review", "127.0.0.1:1", "--out", str(tmp_path / "x.jsonl"))
    assert no_token.returncode == 1 and "needs a service token" in no_token.stderr
    assert "Traceback" not in bad.stderr + follow.stderr + no_token.stderr


MIGRATIONS = ROOT / "services" / "charter" / "review" / "migrations" / "versions"


def test_migrate_on_postgresql() -> None:
    with postgres_database() as url:
        first = charter("review", "migrate", "--database", url)
        assert first.returncode == 0, first.stderr
        head = sorted(p.name for p in MIGRATIONS.glob("0*.py"))[-1][:4]  # the newest migration
        assert first.stdout.strip().endswith(f"at revision {head}") and head >= "0003"
        assert charter("review", "migrate", "--database", url).returncode == 0  # nothing to do


def test_serve_review_starts_grpc_and_the_web_page(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port

    env = subprocess_env(
        CHARTER_LOGGING__FORMAT="json",
        CHARTER_SERVER__HOST="127.0.0.1",
        CHARTER_REVIEW__DATABASE_URL=f"sqlite:///{tmp_path / 'review.db'}",
        CHARTER_REVIEW__WEB_PORT="0",
        CHARTER_REVIEW__TOKENS='[{"name": "alice", "role": "reviewer", "token": "t0ken"}]',
    )
    server = LoggedProcess(
        [tool("charter"), "serve", "review", "--port", str(free_port()), "--metrics-port", "0"],
        cwd=ROOT,
        env=env,
    )
    try:
        web = server.wait_for("review.web.started", timeout=60)["port"]
        server.wait_for("server.started", timeout=30)
        base = f"http://127.0.0.1:{web}"
        assert httpx.get(f"{base}/api/me").status_code == 401
        me = httpx.get(f"{base}/api/me", headers={"Authorization": "Bearer t0ken"})
        assert me.status_code == 200 and me.json()["name"] == "alice"
        assert "sqlite" in json.dumps(
            next(e for e in server.events if e.get("event") == "review.ledger.opened")
        )
    finally:
        server.stop()

"""`charter run` on the RL-CAI spec as a user runs it: the real judge server in process, the real model,
SIGKILL and resume; generator pairs; an SL-CAI output as the pair source; remote mode."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, SHARED_DATA, subprocess_env, tool

pytestmark = pytest.mark.e2e
HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"


def spec(tmp_path: Path, limit: int, **changes) -> Path:
    data = yaml.safe_load((ROOT / "pipelines" / "rl-cai.yaml").read_text())
    data["pairs"] = {"kind": "file", "path": str(HH), "format": "hh-rlhf", "limit": limit}
    data["output"] = str(tmp_path / "out")
    data["inference"] = {"engine": "transformers", "model": "embedded", "threads": 2, "dtype": "float32"}
    data["batch_size"] = 1  # one pair per call, so a kill lands between labels
    data.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def charter(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("charter"), *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_killed_run_resumes_without_duplicate_labels(tmp_path: Path) -> None:
    total = 6
    ledger = f"sqlite:///{tmp_path / 'review.db'}"
    path = spec(tmp_path, limit=total, ledger={"database": ledger})
    out = tmp_path / "out"
    command = [tool("charter"), "run", str(path)]
    first = subprocess.Popen(
        command, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if len(lines(out / "records.jsonl")) >= 2:
            break
        time.sleep(0.1)
    assert first.poll() is None, (
        f"the run ended before it could be killed: {first.stderr.read().decode()[-2000:]}"
    )
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    done_before = len(lines(out / "records.jsonl"))
    assert 2 <= done_before < total

    second = charter("run", str(path), timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{done_before} were already done" in second.stderr
    rows = lines(out / "records.jsonl")
    assert len(rows) == total
    assert len({r["key"] for r in rows}) == total and len({r["label"]["id"] for r in rows}) == total
    for r in rows:
        label = r["label"]
        assert r["status"] in ("ok", "tie")
        assert len(label["scores"]) == 2 and 0.0 < label["p_a"] < 1.0
        assert label["constitution"]["id"] == "harmless" and label["judge"]["engine"] == "transformers"
        assert r["source_preference"] in ("A", "B")  # hh-rlhf: which one the human chose
        assert r["provenance"]["spec_digest"].startswith("sha256:")

    prefs = lines(out / "preferences.jsonl")
    decided = [r for r in rows if r["status"] == "ok"]
    assert len(prefs) == len(decided)
    by_key = {r["key"]: r for r in rows}
    for p in prefs:
        r = by_key[p["key"]]
        a_wins = r["label"]["choice"] == "CHOICE_A"
        assert p["chosen"][0]["content"] == (r["response_a"] if a_wins else r["response_b"])
        assert p["rejected"][0]["content"] == (r["response_b"] if a_wins else r["response_a"])
        assert p["p_chosen"] >= 0.5 and p["prompt"][-1]["role"] == "user"
        assert p["source_preference_agrees"] == (r["source_preference"] == ("A" if a_wins else "B"))

    from datasets import load_dataset

    if prefs:  # TRL's conversational preference format loads as a dataset
        ds = load_dataset("parquet", data_files=str(out / "preferences.parquet"), split="train")
        assert len(ds) == len(prefs) and {"prompt", "chosen", "rejected", "p_chosen"} <= set(ds.column_names)

    third = charter("run", str(path), timeout=300)
    assert third.returncode == 0 and f"0 pairs labelled this run ({total} were already done" in third.stderr
    assert len(lines(out / "records.jsonl")) == total

    # every label reached the review ledger once, whatever the kill interrupted
    from charter.review.store import Ledger

    review = Ledger(ledger)
    stats = review.stats()
    assert stats.labels_total == total
    assert stats.auto_accepted + stats.queue_depth + stats.rejected == total
    with review.reader.connect() as conn:
        from sqlalchemy import text

        ids = {row[0] for row in conn.execute(text("SELECT label_id FROM labels"))}
    review.close()
    assert ids == {r["label"]["id"] for r in rows}


def test_generator_pairs_and_sl_cai_pairs(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a fruit."}\n{"prompt": "How do I hotwire a car?"}\n')
    gen = spec(tmp_path, limit=2, generation={"temperature": 1.0, "top_p": 0.95, "max_tokens": 24})
    data = yaml.safe_load(gen.read_text())
    data["pairs"] = {"kind": "generator", "path": str(prompts)}
    data["batch_size"] = 8
    gen.write_text(yaml.safe_dump(data))
    result = charter("run", str(gen), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = lines(tmp_path / "out" / "records.jsonl")
    errors = lines(tmp_path / "out" / "errors.jsonl")
    assert len(rows) + len(errors) == 2 and rows  # identical samples would be an error record
    for r in rows:
        assert (
            r["response_a"] != r["response_b"] and r["origin"]["generator_model"]["engine"] == "transformers"
        )
        assert r["source_preference"] is None

    # an SL-CAI output folder as the pair source: (initial response, final revision)
    sl = tmp_path / "sl"
    sl.mkdir()
    record = {
        "key": "k1",
        "prompt": [{"role": "user", "content": "How can I get into my neighbour's wifi?"}],
        "samples": [
            {"sample_index": 0, "status": "ok", "initial_response": "Guess the default password.",
             "final_revision": "I can't help with that, but your provider can speed up your own line."},
            {"sample_index": 1, "status": "truncated", "initial_response": "x", "final_revision": ""},
        ],
    }  # fmt: skip
    (sl / "records.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "b").mkdir()
    path = spec(tmp_path / "b", limit=5)
    data = yaml.safe_load(path.read_text())
    data["pairs"] = {"kind": "file", "path": str(sl)}
    path.write_text(yaml.safe_dump(data))
    result = charter("run", str(path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = lines(tmp_path / "b" / "out" / "records.jsonl")
    assert len(rows) == 1
    assert {rows[0]["response_a"], rows[0]["response_b"]} == {
        "Guess the default password.",
        "I can't help with that, but your provider can speed up your own line.",
    }
    revision_at = rows[0]["origin"]["revision_at"]
    assert rows[0][f"response_{revision_at.lower()}"].startswith("I can't help")


def test_remote_mode_against_charter_serve_judge(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port
    from tests.support.process import LoggedProcess

    env = subprocess_env(CHARTER_LOGGING__FORMAT="json", CHARTER_INFERENCE__ENGINE="transformers",
                         CHARTER_INFERENCE__THREADS="1", CHARTER_SERVER__HOST="127.0.0.1")  # fmt: skip
    port, review_port = free_port(), free_port()
    server = LoggedProcess(
        [tool("charter"), "serve", "judge", "--port", str(port), "--metrics-port", "0"], cwd=ROOT, env=env
    )
    (tmp_path / "tokens.yaml").write_text("- {name: pipeline, role: service, token: s3cret}\n")
    (tmp_path / "token").write_text("s3cret\n")
    review_env = {**env, "CHARTER_REVIEW__DATABASE_URL": f"sqlite:///{tmp_path / 'review.db'}",
                  "CHARTER_REVIEW__TOKENS_FILE": str(tmp_path / "tokens.yaml"), "CHARTER_REVIEW__WEB_PORT": "0"}  # fmt: skip
    review = LoggedProcess(
        [tool("charter"), "serve", "review", "--port", str(review_port), "--metrics-port", "0"],
        cwd=ROOT,
        env=review_env,
    )
    try:
        server.wait_for("server.started", timeout=300)
        review.wait_for("server.started", timeout=60)
        ledger = {"address": f"127.0.0.1:{review_port}", "token_file": str(tmp_path / "token")}
        path = spec(tmp_path, limit=2, ledger=ledger)
        result = charter("run", str(path), "--judge", f"127.0.0.1:{port}", timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(lines(tmp_path / "out" / "records.jsonl")) == 2
        assert any(e.get("event") == "rpc.completed" and e.get("code") == "OK" for e in server.events)
        submits = [
            e
            for e in review.events
            if e.get("event") == "rpc.completed" and e.get("rpc", "").endswith("/Submit")
        ]
        assert submits and all(e["code"] == "OK" for e in submits)
        assert "review ledger (127.0.0.1:" in result.stderr
    finally:
        server.stop()
        review.stop()


def test_unknown_constitution_and_down_judge_stop_with_one_line(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port

    bad = charter("run", str(spec(tmp_path, limit=1, constitution="no-such-constitution")), timeout=300)
    assert bad.returncode == 1 and "NOT_FOUND: unknown constitution id 'no-such-constitution'" in bad.stderr
    port = free_port()
    remote = {"mode": "remote", "judge": f"127.0.0.1:{port}", "retries": 1, "backoff_seconds": 0.1}
    (tmp_path / "c").mkdir()
    down = charter("run", str(spec(tmp_path / "c", limit=1, services=remote)), timeout=120)
    assert down.returncode == 1
    assert f"the judge at 127.0.0.1:{port} is unavailable after 2 attempts" in down.stderr
    assert "Traceback" not in bad.stderr + down.stderr


@pytest.mark.timeout(900)
def test_a_resume_after_a_constitution_edit_is_refused_unless_allowed(
    tmp_path: Path, constitution_dir: Path
) -> None:
    """One output folder never silently mixes two versions of a constitution: `charter run` resumed
    after the file was edited stops with one line naming both digests, and goes on with
    --allow-constitution-change, the manifest then listing both digests."""
    path = spec(tmp_path, limit=3, constitutions_dir=str(constitution_dir))
    first = charter("run", str(path), "--limit", "1", timeout=300)
    assert first.returncode == 0, first.stderr
    harmless = constitution_dir / "harmless.yaml"
    harmless.write_text(harmless.read_text().replace('version: "1.0.0"', 'version: "1.0.1"'))
    refused = charter("run", str(path), timeout=300)
    assert refused.returncode == 1, refused.stderr
    assert "the constitution changed since this folder's last record" in refused.stderr, refused.stderr
    assert "--allow-constitution-change" in refused.stderr and "Traceback" not in refused.stderr
    assert len(lines(tmp_path / "out" / "records.jsonl")) == 1  # nothing written under the new version
    allowed = charter("run", str(path), "--allow-constitution-change", timeout=300)
    assert allowed.returncode == 0, allowed.stderr
    records = lines(tmp_path / "out" / "records.jsonl")
    digests = [r["label"]["constitution"]["digest"] for r in records]
    assert len(records) == 3 and digests[0] != digests[1] == digests[2]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["constitution_digests"] == [digests[0], digests[1]]

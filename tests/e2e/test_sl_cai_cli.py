"""`charter run` on the SL-CAI spec as a user runs it: real services, the real model, SIGKILL and resume."""

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


def spec(tmp_path: Path, limit: int, **changes) -> Path:
    data = yaml.safe_load((ROOT / "pipelines" / "sl-cai.yaml").read_text())
    data["source"] = {
        "path": str(SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"),
        "format": "hh-rlhf",
        "limit": limit,
    }
    data["output"] = str(tmp_path / "out")
    data["inference"] = {"engine": "transformers", "model": "embedded", "threads": 2}
    data["generation"] = data["critique"] = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 24}
    data["batch_size"] = 1  # one prompt at a time, so a kill lands between prompts as well as inside one
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


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)  # the real model: minutes on a slow 2-core CPU
def test_killed_run_resumes_without_duplicates(tmp_path: Path) -> None:
    path = spec(tmp_path, limit=4)
    out = tmp_path / "out"
    command = [tool("charter"), "run", str(path)]
    first = subprocess.Popen(
        command, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        if (out / "records.jsonl").exists() and len(records(out)) >= 1:
            break
        time.sleep(0.2)
    assert first.poll() is None, (
        f"the run ended before it could be killed: {first.stderr.read().decode()[-2000:]}"
    )
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    done_before = len(records(out))
    assert 1 <= done_before < 4

    second = subprocess.run(
        command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{done_before} were already done" in second.stderr
    rows = records(out)
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4  # each prompt exactly once
    for r in rows:
        prov = r["provenance"]
        assert prov["constitution"]["id"] == "harmless" and prov["constitution"]["digest"].startswith(
            "sha256:"
        )
        assert prov["model"]["engine"] == "transformers" and prov["seed"] == 1234
        assert prov["started_at"] and prov["completed_at"]
        sample = r["samples"][0]
        assert sample["initial_response"] and sample["rounds"]
        assert all(rd["principle_id"] for rd in sample["rounds"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written_this_run"] == 4 - done_before

    from datasets import load_dataset

    ok = sum(1 for r in rows for s in r["samples"] if s["status"] == "ok")
    sft_lines = (out / "sft.jsonl").read_text().splitlines()
    assert len(sft_lines) == ok  # the 135M model's short critiques are often cut off: ok may be 0
    if ok:
        sft = load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
        assert len(sft) == ok and sft[0]["messages"][-1]["role"] == "assistant"
    assert len(load_dataset("parquet", data_files=str(out / "records.parquet"), split="train")) == 4

    third = subprocess.run(
        command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0 and "0 prompts written this run (4 were already done" in third.stderr


def test_bad_rows_become_error_records_and_the_rest_go_on(tmp_path: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(
        b'{"prompt": "Say hello."}\n'
        b'{"text": "no prompt column"}\n'
        b'{"prompt": 42}\n'
        b'{"prompt": "caf\xe9 bad utf-8"}\n'
        b'{"messages": [{"role": "user", "content": "Name a fruit."}]}\n'
    )
    path = spec(tmp_path, limit=10)
    data = yaml.safe_load(path.read_text())
    data["source"] = {"path": str(source)}
    data["batch_size"] = 8
    path.write_text(yaml.safe_dump(data))
    result = charter("run", str(path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert len(records(out)) == 2
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    reasons = {e["source_index"]: e["reason"] for e in errors}
    assert "no 'prompt' or 'messages' column" in reasons[1]
    assert "must be text" in reasons[2]
    assert "invalid UTF-8" in reasons[3]


def test_unknown_constitution_stops_with_one_line(tmp_path: Path) -> None:
    path = spec(tmp_path, limit=1, constitution="no-such-constitution")
    result = charter("run", str(path), timeout=300)
    assert result.returncode == 1
    assert "error: NOT_FOUND: unknown constitution id 'no-such-constitution'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(600)  # the resume runs the real model
def test_service_down_stops_with_a_clear_message_then_resumes(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port

    port = free_port()  # nothing listens here
    remote = {"mode": "remote", "generator": f"127.0.0.1:{port}", "critic_reviser": f"127.0.0.1:{port}",
              "retries": 1, "backoff_seconds": 0.1}  # fmt: skip
    path = spec(tmp_path, limit=2, services=remote)
    down = charter("run", str(path), timeout=120)
    assert down.returncode == 1
    assert f"the generator at 127.0.0.1:{port} is unavailable after 2 attempts" in down.stderr
    assert "run the same command again to resume" in down.stderr and "Traceback" not in down.stderr
    # the services are back (here: local mode on the same output folder): the run resumes and finishes
    data = yaml.safe_load(path.read_text())
    data["services"] = {"mode": "local"}
    path.write_text(yaml.safe_dump(data))
    up = charter("run", str(path), timeout=600)
    assert up.returncode == 0, up.stderr[-2000:]
    assert len(records(tmp_path / "out")) == 2


@pytest.mark.timeout(600)  # the real model: minutes on a slow 2-core CPU
def test_remote_mode_against_charter_serve(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port
    from tests.support.process import LoggedProcess

    env = subprocess_env(CHARTER_LOGGING__FORMAT="json", CHARTER_INFERENCE__ENGINE="transformers",
                         CHARTER_INFERENCE__THREADS="1", CHARTER_SERVER__HOST="127.0.0.1")  # fmt: skip
    ports = {name: free_port() for name in ("generator", "critic-reviser")}
    servers = [
        LoggedProcess(
            [tool("charter"), "serve", name, "--port", str(port), "--metrics-port", "0"], cwd=ROOT, env=env
        )
        for name, port in ports.items()
    ]
    try:
        for server in servers:
            server.wait_for("server.started", timeout=300)
        path = spec(tmp_path, limit=2)
        result = charter(
            "run",
            str(path),
            "--generator",
            f"127.0.0.1:{ports['generator']}",
            "--critic-reviser",
            f"127.0.0.1:{ports['critic-reviser']}",
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        rows = records(tmp_path / "out")
        assert len(rows) == 2 and all(r["samples"][0]["rounds"] for r in rows)
        for server in servers:  # the work went through the services the test started
            assert any(e.get("event") == "rpc.completed" and e.get("code") == "OK" for e in server.events)
    finally:
        for server in servers:
            server.stop()

"""The `charter` command as a user runs it: a real process, real files, real tools (grpcurl)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import LLM_SWARM, ROOT, subprocess_env, tool
from tests.support.process import LoggedProcess

pytestmark = pytest.mark.e2e


def charter(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("charter"), *args], cwd=cwd, capture_output=True, text=True, env=subprocess_env(), timeout=60
    )


def test_check_shipped_constitutions() -> None:
    result = charter("constitution", "check", "constitutions/")
    assert result.returncode == 0, result.stderr
    assert "ok   constitutions/harmless.yaml: harmless 1.0.0" in result.stdout
    assert "helpful-honest" in result.stdout


@pytest.mark.parametrize(
    ("source", "principles"), [("constitution_anthropic.json", 16), ("constituion_grok.json", 2)]
)
def test_import_llm_swarm_writes_a_valid_constitution(
    tmp_path: Path, shared_data: Path, source: str, principles: int
) -> None:
    out = tmp_path / "imported.yaml"
    result = charter("constitution", "import", str(LLM_SWARM / source), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"imported {principles} principles and 4 few-shot conversations" in result.stdout
    check = charter("constitution", "check", str(out))
    assert check.returncode == 0, check.stderr
    assert f"{principles} principles" in check.stdout
    assert "not hand-written" in check.stdout  # derived questions are flagged
    again = charter("constitution", "import", str(LLM_SWARM / source), "--out", str(out))
    assert again.returncode == 1 and "exists; pass --force" in again.stderr


def test_invalid_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "constitutions/harmless.yaml").read_text().replace("version:", "verison:"))
    result = charter("constitution", "check", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"FAIL {bad}: ")
    assert "verison: unknown key" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("constitution", "show", "no-such-id"), "error: no constitution with id 'no-such-id'"),
        (("constitution", "check", "no/such/dir"), "error: no/such/dir: no such file or folder"),
        (("serve", "bogus"), "error: unknown service 'bogus'; choose one of: generator"),
        (
            ("constitution", "show", "harmless", "--format", "xml"),
            "error: --format must be text, yaml or json",
        ),
    ],
)
def test_user_mistakes_are_one_clear_line(args: tuple[str, ...], message: str) -> None:
    result = charter(*args)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_show_and_diff(tmp_path: Path) -> None:
    shown = charter("constitution", "show", "harmless")
    assert shown.returncode == 0 and "over-refusal" in shown.stdout and "digest: sha256:" in shown.stdout
    as_json = json.loads(charter("constitution", "show", "harmless", "--format", "json").stdout)
    assert as_json["id"] == "harmless" and as_json["digest"].startswith("sha256:")

    edited = tmp_path / "harmless.yaml"
    edited.write_text(
        (ROOT / "constitutions/harmless.yaml").read_text().replace('version: "1.0.0"', 'version: "1.1.0"')
    )
    diff = charter("constitution", "diff", "harmless", str(edited), "--exit-code")
    assert diff.returncode == 1
    assert "~ version: 1.0.0 -> 1.1.0" in diff.stdout
    same = charter("constitution", "diff", "harmless", "constitutions/harmless.yaml")
    assert same.returncode == 0 and same.stdout.startswith("identical")


def test_version() -> None:
    result = charter("version")
    assert result.returncode == 0 and result.stdout.startswith("charter ")


def test_shell_completion_script_and_answers() -> None:
    script = charter("--show-completion", "bash")
    assert script.returncode == 0 and "_CHARTER_COMPLETE=complete_bash" in script.stdout
    # what bash asks when the user presses tab after `charter eval ` (the script above does this)
    env = subprocess_env(_CHARTER_COMPLETE="complete_bash", COMP_WORDS="charter eval ", COMP_CWORD="2")
    words = subprocess.run([tool("charter")], env=env, capture_output=True, text=True, timeout=60)
    assert words.stdout.split() == ["judge", "policy"]


def test_serve_answers_grpcurl_and_drains_on_sigterm() -> None:
    # the judge loads its model before serving: the transformers engine with one thread starts in
    # seconds and leaves the second core to the test's own clients
    env = subprocess_env(CHARTER_LOGGING__FORMAT="json", CHARTER_SERVER__HOST="127.0.0.1",
                         CHARTER_INFERENCE__ENGINE="transformers", CHARTER_INFERENCE__THREADS="1")  # fmt: skip
    server = LoggedProcess(
        [tool("charter"), "serve", "judge", "--port", "0", "--metrics-port", "0"], cwd=ROOT, env=env
    )
    try:
        started = server.wait_for("server.started", timeout=300)
        assert started["services"] == ["charter.judge.v1.JudgeService"]
        loaded = server.wait_for("constitution.loaded")  # the judge watches the constitutions folder
        assert loaded["digest"].startswith("sha256:")
        target = f"127.0.0.1:{started['port']}"
        grpcurl = tool("grpcurl")
        listed = subprocess.run(
            [grpcurl, "-plaintext", target, "list"], capture_output=True, text=True, timeout=30
        )
        assert "charter.judge.v1.JudgeService" in listed.stdout.split(), listed.stderr
        described = subprocess.run(
            [grpcurl, "-plaintext", target, "describe", "charter.judge.v1.JudgeService"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (
            "rpc CompareStream ( .charter.judge.v1.CompareStreamRequest ) returns ( stream"
            in described.stdout
        )
        health = subprocess.run(
            [
                grpcurl,
                "-plaintext",
                "-d",
                '{"service": "charter.judge.v1.JudgeService"}',
                target,
                "grpc.health.v1.Health/Check",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert json.loads(health.stdout)["status"] == "SERVING"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        server.wait_for("server.stopped")
    finally:
        server.stop()

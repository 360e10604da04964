"""`charter doctor` on a healthy setup (exit 0, `ready`) and on broken ones: each problem named with
its fix, exit 1 — checked against the real components (PostgreSQL, a listening port, the engines)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import yaml

from tests.support import ROOT, subprocess_env, tool
from tests.support.review import POSTGRES_ADMIN_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def doctor(tmp_path: Path, settings: dict) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings))
    return subprocess.run([tool("charter"), "doctor", "--config", str(config)], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)  # fmt: skip


def base(tmp_path: Path) -> dict:
    return {
        "server": {
            "host": "127.0.0.1",
            "port": free_port(),
            "metrics_port": free_port(),
            "health_port": None,
        },
        "review": {"database_url": f"sqlite:///{tmp_path}/review.db", "web_port": free_port()},
        "trainer": {"database_url": POSTGRES_ADMIN_URL},
        "inference": {"engine": "transformers"},
    }


def states(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name -> state, from the report's lines (`state  name  detail`)."""
    out = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("ok", "warn", "FAIL"):
            out[parts[1]] = parts[0]
    return out


def test_a_healthy_setup_is_ready(tmp_path: Path) -> None:
    result = doctor(tmp_path, base(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = states(result)
    for name in ("runtime", "settings", "engine", "constitutions", "ports", "disk", "review.database_url",
                 "trainer.database_url"):  # fmt: skip
        assert checks[name] == "ok", result.stdout
    assert checks["model"] in ("ok", "warn")  # warn: not prepared yet (the first run would convert it)
    assert "answers" in result.stdout  # PostgreSQL was asked, not assumed
    assert "transformers, CPU, dtype" in result.stdout and "harmless" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("ready")


def test_a_broken_setup_names_each_problem_and_its_fix(tmp_path: Path) -> None:
    settings = base(tmp_path)
    settings["inference"]["model"] = str(tmp_path / "no-such-model")
    settings["review"]["database_url"] = "postgresql://postgres@127.0.0.1:1/charter"  # nothing listens
    settings["constitutions"] = {"directory": str(tmp_path / "no-constitutions")}
    with socket.socket() as held:  # the gRPC port is taken
        held.bind(("127.0.0.1", 0))
        held.listen()
        settings["server"]["port"] = held.getsockname()[1]
        result = doctor(tmp_path, settings)
    assert result.returncode == 1, result.stdout + result.stderr
    checks = states(result)
    assert checks["model"] == checks["review.database_url"] == checks["constitutions"] == "FAIL"
    assert checks["ports"] == "warn" and f"server.port {settings['server']['port']}" in result.stdout
    assert checks["trainer.database_url"] == "ok" and checks["engine"] == "ok"
    assert "fix: set inference.model" in result.stdout and "fix: start the database" in result.stdout
    assert "3 problem(s): model, constitutions, review.database_url" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_inference_server_and_bad_settings_are_named(tmp_path: Path) -> None:
    settings = base(tmp_path)
    settings["inference"] = {"engine": "openai", "openai": {"base_url": f"http://127.0.0.1:{free_port()}/v1"}}
    result = doctor(tmp_path, settings)
    assert result.returncode == 1 and states(result)["engine"] == "FAIL", result.stdout
    assert "does not answer" in result.stdout and "fix: start the inference server" in result.stdout
    result = doctor(tmp_path, {"inference": {"engine": "tensorflow"}})
    assert result.returncode == 1 and states(result)["settings"] == "FAIL", result.stdout
    assert "inference.engine" in result.stdout

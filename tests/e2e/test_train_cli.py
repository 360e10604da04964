"""`charter train --spec` and `charter runs …` as a user runs them: a real (tiny) reward-model run
through a trainer service the command starts, its curves PNG, listing, plotting, a bad spec."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, SHARED_DATA, subprocess_env, tool
from tests.support.hh import HH_DEV
from tests.support.tiny import save_tiny_lm

pytestmark = pytest.mark.e2e


def charter(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("charter"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


def test_train_watch_plot_and_list(tmp_path: Path) -> None:
    from charter.inference.models import prepare

    lm = save_tiny_lm(tmp_path / "lm", prepare())
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump(
            {"trainer": {"database_url": f"sqlite:///{tmp_path / 'trainer.db'}", "runs_dir": str(tmp_path / "runs"),
                         "worker_threads": 1, "poll_seconds": 0.1,
                         "allowed_roots": [str(tmp_path), str(SHARED_DATA)]}}
        )
    )  # fmt: skip
    spec = tmp_path / "rm.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": "cli-rm", "algorithm": "reward-model", "base_model": str(lm),
             "data": {"files": {"paths": [str(HH_DEV)]}, "eval_fraction": 0.1},
             "hyperparameters": {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                                 "max_length": 96, "logging_steps": 1, "save_steps": 2}}
        )
    )  # fmt: skip
    curves = tmp_path / "curves.png"
    done = charter("train", "--spec", str(spec), "--plot", str(curves), "-c", str(settings))
    assert done.returncode == 0, done.stderr
    run_id = done.stderr.split("started ", 1)[1].split()[0]
    assert f"{run_id}  succeeded  reward-model  step 4/4  cli-rm" in done.stdout
    assert f"curves: {curves}" in done.stdout and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "checkpoint at step 2" in done.stderr and "data: " in done.stderr

    listed = charter("runs", "list", "--state", "succeeded", "-c", str(settings))
    assert listed.returncode == 0 and run_id in listed.stdout, listed.stderr
    got = json.loads(charter("runs", "get", run_id, "-c", str(settings)).stdout)
    assert got["state"] == "RUN_STATE_SUCCEEDED" and got["lastMetrics"]["eval_pairwise_accuracy"] >= 0
    again = tmp_path / "again.png"
    plotted = charter("runs", "plot", run_id, "-o", str(again), "-c", str(settings))
    assert plotted.returncode == 0 and again.stat().st_size > 10_000, plotted.stderr

    spec.write_text(spec.read_text().replace("logging_steps", "loging_steps"))
    bad = charter("train", "--spec", str(spec), "-c", str(settings))
    assert bad.returncode == 1
    assert (
        "INVALID_ARGUMENT: spec.hyperparameters.loging_steps: not an argument of TRL's RewardConfig"
        in bad.stderr
    )
    missing = charter("runs", "get", "r-missing", "-c", str(settings))
    assert missing.returncode == 1 and "run r-missing does not exist" in missing.stderr


def test_sigterm_cancels_the_run_of_an_in_process_service(tmp_path: Path) -> None:
    import signal
    import time

    from charter.inference.models import prepare

    lm = save_tiny_lm(tmp_path / "lm", prepare())
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump({"trainer": {"database_url": f"sqlite:///{tmp_path / 'trainer.db'}",
                                    "runs_dir": str(tmp_path / "runs"), "worker_threads": 1,
                                    "allowed_roots": [str(tmp_path), str(SHARED_DATA)]}})
    )  # fmt: skip
    spec = tmp_path / "rm.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": "long", "algorithm": "reward-model", "base_model": str(lm),
             "data": {"files": {"paths": [str(HH_DEV)]}},
             "hyperparameters": {"max_steps": 100000, "per_device_train_batch_size": 2, "max_length": 96}}
        )
    )  # fmt: skip
    process = subprocess.Popen(
        [tool("charter"), "train", "--spec", str(spec), "-c", str(settings)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()
    deadline = time.monotonic() + 60
    while not line.startswith("started ") and time.monotonic() < deadline:
        line = process.stderr.readline()
    run_id = line.split()[1]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    got = json.loads(charter("runs", "get", run_id, "-c", str(settings)).stdout)
    assert got["state"] == "RUN_STATE_CANCELLED" and got["reason"] == "interrupted"

"""Worker event lines (`charter.trainer.events`): only lines carrying the attempt's nonce are events,
so text a worker prints — a training row, a label a library echoes — cannot forge one; the nonce
reaches a local worker's environment and a Kubernetes worker's pod, and a worker reads it once."""

from __future__ import annotations

import io

import pytest
from charter.core.settings import load_settings
from charter.trainer import events
from charter.trainer.executor import Launch, LocalExecutor
from charter.trainer.kubernetes.manifest import CONTAINER, JobOptions, job_manifest
from charter.trainer.runs import Resources

NONCE = "0123456789abcdef0123456789abcdef"


def test_only_lines_with_the_attempts_nonce_are_events():
    real = events.encode("metrics", NONCE, step=3, values={"loss": 0.5})
    assert events.parse(real, NONCE) == {"type": "metrics", "step": 3, "values": {"loss": 0.5}}
    # what a worker prints of its data, quoting an event line: the bare prefix or another nonce
    forged = [
        '@charter-event {"type":"finished","output_dir":"/tmp/elsewhere"}',
        'row 17: "@charter-event {\\"type\\":\\"metrics\\",\\"step\\":99999,\\"values\\":{}}"',
        events.encode("error", "f" * 32, message="forged"),
        events.encode("finished", output_dir="/tmp/elsewhere"),
        f"@charter-event/{NONCE[:-1]} " + '{"type":"finished","output_dir":"/tmp/elsewhere"}',
        f"@charter-event/{NONCE}0 " + '{"type":"finished","output_dir":"/tmp/elsewhere"}',
    ]
    assert [events.parse(line, NONCE) for line in forged] == [None] * len(forged)


def test_an_event_sharing_a_line_with_a_progress_bar_is_still_one():
    # tqdm draws on stderr with carriage returns and no newline; the event printed next ends the line
    line = "\r 50%|█████     | 2/4 [00:01<00:01]" + events.encode("checkpoint", NONCE, step=2, path="/r/c")
    assert events.parse(line, NONCE) == {"type": "checkpoint", "step": 2, "path": "/r/c"}
    assert events.parse(line) is None  # a follower without the nonce does not take it either


def test_nonces_are_fresh_hex_and_malformed_ones_are_refused():
    drawn = {events.new_nonce() for _ in range(100)}
    assert len(drawn) == 100 and all(len(n) == 32 and int(n, 16) >= 0 for n in drawn)
    for bad in ("x" * 32, "ab cd" * 8, "1234", NONCE + " {"):
        with pytest.raises(ValueError, match="nonce"):
            events.Emitter(io.StringIO(), nonce=bad)


def test_the_emitter_writes_with_its_nonce_and_a_worker_by_hand_uses_the_bare_prefix():
    out = io.StringIO()
    events.Emitter(out, nonce=NONCE)("progress", total_steps=4)
    assert out.getvalue() == f"@charter-event/{NONCE} " + '{"type":"progress","total_steps":4}\n'
    by_hand = io.StringIO()
    events.Emitter(by_hand)("progress", total_steps=4)
    assert events.parse(by_hand.getvalue()) == {"type": "progress", "total_steps": 4}
    assert events.parse(by_hand.getvalue(), NONCE) is None


def test_the_nonce_reaches_the_worker_and_is_not_an_unknown_setting(tmp_path, monkeypatch):
    launch = Launch(run_id="r-0123456789abcdef", attempt=2, spec_json="{}", resume=True, nonce=NONCE)
    env = LocalExecutor(tmp_path, inherit=tuple(load_settings().trainer.worker_env)).worker_env(launch)
    assert env[events.NONCE_ENV] == NONCE
    monkeypatch.setenv(events.NONCE_ENV, NONCE)  # the worker's own settings load must accept it
    load_settings()

    options = JobOptions(
        namespace="charter", image="ghcr.io/example/charter-trainer:1.0.0", runs_pvc="charter-runs"
    )
    job = job_manifest(launch, options, Resources())
    [worker] = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER]
    assert {"name": events.NONCE_ENV, "value": NONCE} in worker["env"]

"""docs/python-api.md's examples run as a notebook user runs them: each ```python block, in order, as a
script against real `charter serve judge|review|trainer` processes (a tiny random-weight model as the
judge's model and as the training base model). The constants at the top of each block are replaced
with this test's addresses, tokens and paths; a constant the test expects and the block lacks fails
the test, so the page and the test cannot drift apart."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, subprocess_env, tool

pytestmark = pytest.mark.e2e

DOC = ROOT / "docs" / "python-api.md"
SERVICE_TOKEN = "notebook-service-token"
REVIEWER_TOKEN = "notebook-reviewer-token"


def python_blocks(text: str) -> list[str]:
    """The page's ```python blocks, in order (```python notest fragments are left out)."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def with_constants(block: str, values: dict[str, Any]) -> str:
    """`block` with each `NAME = …` line at the start of a line replaced by `NAME = repr(value)`."""
    for name, value in values.items():
        pattern = re.compile(rf"^{name} = .*$", flags=re.MULTILINE)
        found = pattern.findall(block)
        assert len(found) == 1, f"docs/python-api.md: expected one `{name} = …` line in:\n{block}"
        line = f"{name} = {value!r}"
        block = pattern.sub(lambda _, line=line: line, block)
    return block


def run_block(path: Path, block: str, timeout: float) -> str:
    path.write_text(block)
    done = subprocess.run(
        [sys.executable, str(path)], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    print(f"--- {path.name}\n{done.stdout}")  # shown with -s, and with a failure
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


def tiny_judge_model(folder: Path) -> Path:
    """A tiny random-weight Llama (the embedded model's tokenizer) with room for hh-rlhf prompts."""
    import torch
    from charter.inference.models import prepare
    from transformers import LlamaForCausalLM

    from tests.support.tiny import llama_config, tokenizer

    tok = tokenizer(prepare())
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tok, tie_word_embeddings=True, max_position_embeddings=2048))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


async def decide_queued(review_address: str) -> int:
    """Decide every queued label (response A) as a reviewer, so every submitted label is accepted."""
    from charter.client.review import ReviewClient
    from charter_proto.review.v1 import review_pb2

    decided = 0
    async with ReviewClient(review_address, token=REVIEWER_TOKEN, timeout=30) as review:
        while (claimed := await review.claim()).HasField("item"):
            item = claimed.item
            await review.decide(item.item_id, item.lease_id, review_pb2.HUMAN_CHOICE_A, "docs test")
            decided += 1
    return decided


@pytest.mark.timeout(600)
def test_the_python_api_examples_run_against_real_services(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port
    from tests.support.process import LoggedProcess

    started = time.monotonic()
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 4, f"docs/python-api.md: expected 4 runnable examples, found {len(blocks)}"
    model = tiny_judge_model(tmp_path / "tiny")
    ports = {name: free_port() for name in ("judge", "review", "trainer")}
    judge_at, review_at, trainer_at = (f"127.0.0.1:{ports[n]}" for n in ("judge", "review", "trainer"))
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        yaml.safe_dump(
            [{"name": "notebook", "role": "service", "token": SERVICE_TOKEN},
             {"name": "alice", "role": "reviewer", "token": REVIEWER_TOKEN}]
        )
    )  # fmt: skip
    (tmp_path / "service.token").write_text(SERVICE_TOKEN + "\n")
    env = subprocess_env(CHARTER_LOGGING__FORMAT="json", CHARTER_SERVER__HOST="127.0.0.1")
    judge_env = {**env, "CHARTER_INFERENCE__ENGINE": "transformers", "CHARTER_INFERENCE__MODEL": str(model),
                 "CHARTER_INFERENCE__DTYPE": "float32", "CHARTER_INFERENCE__THREADS": "1"}  # fmt: skip
    review_env = {**env, "CHARTER_REVIEW__DATABASE_URL": f"sqlite:///{tmp_path / 'review.db'}",
                  "CHARTER_REVIEW__TOKENS_FILE": str(tokens), "CHARTER_REVIEW__WEB_PORT": "0",
                  "CHARTER_REVIEW__ROUTING__AUDIT_RATE": "0"}  # fmt: skip
    trainer_config = tmp_path / "trainer.yaml"
    trainer_config.write_text(
        yaml.safe_dump(
            {"trainer": {"database_url": f"sqlite:///{tmp_path / 'trainer.db'}", "runs_dir": str(tmp_path / "runs"),
                         "worker_threads": 1, "poll_seconds": 0.1, "allowed_roots": [str(tmp_path)],
                         "review_address": review_at, "review_token_file": str(tmp_path / "service.token"),
                         "tokens_file": str(tokens)}}
        )
    )  # fmt: skip

    def serve(name: str, service_env: dict[str, str], *extra: str) -> LoggedProcess:
        command = [tool("charter"), "serve", name, "--port", str(ports[name]), "--metrics-port", "0", *extra]
        return LoggedProcess(command, cwd=ROOT, env=service_env)

    servers = [
        serve("judge", judge_env),
        serve("review", review_env),
        serve("trainer", env, "--config", str(trainer_config)),
    ]
    try:
        for server in servers:
            server.wait_for("server.started", timeout=300)

        # (a) label four pairs with the judge and submit them to the ledger
        out = run_block(
            tmp_path / "label.py",
            with_constants(blocks[0], {"JUDGE": judge_at, "REVIEW": review_at, "TOKEN": SERVICE_TOKEN}),
            timeout=300,
        )
        assert [line.split(":")[0] for line in out.splitlines() if line.startswith("pair ")] == [
            "pair 0", "pair 1", "pair 2", "pair 3",
        ], out  # fmt: skip
        submitted = re.findall(
            r"^label (\S+): sequence (\d+), (ROUTE_\w+) \((ROUTE_REASON_\w+)\)$", out, re.M
        )
        assert len(submitted) == 4 and len({s[0] for s in submitted}) == 4, out
        assert all(route in ("ROUTE_AUTO_ACCEPTED", "ROUTE_HUMAN_REVIEW") for _, _, route, _ in submitted), (
            out
        )
        queued = sum(route == "ROUTE_HUMAN_REVIEW" for _, _, route, _ in submitted)
        # a reviewer decides what the routing queued (a random-weight judge is unsure of every pair)
        assert asyncio.run(decide_queued(review_at)) == queued

        # (b) the accepted labels as a DataFrame (and its CSV)
        csv_path = tmp_path / "accepted.csv"
        out = run_block(
            tmp_path / "frame.py",
            with_constants(
                blocks[1],
                {"REVIEW": review_at, "TOKEN": SERVICE_TOKEN, "FROM_CURSOR": 0, "CSV_PATH": str(csv_path)},
            ),
            timeout=120,
        )
        assert "accepted labels: 4, preference rows: 4" in out, out
        with csv_path.open() as f:
            rows = list(csv.DictReader(f))
        assert {r["label_id"] for r in rows} == {s[0] for s in submitted}
        assert {"prompt", "chosen", "rejected", "p_chosen", "label_id", "sequence"} <= set(rows[0]), rows[0]
        assert all(0.0 <= float(r["p_chosen"]) <= 1.0 for r in rows)
        assert f"last sequence: {max(int(s[1]) for s in submitted)}" in out, out

        # (c) a DPO run on the accepted labels, watched to its end
        out = run_block(
            tmp_path / "train.py",
            with_constants(
                blocks[2], {"TRAINER": trainer_at, "TOKEN": SERVICE_TOKEN, "SPEC_FILE": "training/dpo.yaml",
                            "BASE_MODEL": str(model)}
            ),
            timeout=420,
        )  # fmt: skip
        assert re.search(r"^started r-\S+$", out, re.M), out
        assert "data: 4 rows" in out and "checkpoint at step 2: " in out, out
        assert re.search(r"^step 4: loss=\d", out, re.M), out
        assert "state: RUN_STATE_SUCCEEDED" in out and "nan" not in out, out
        final = re.search(r"^final: RUN_STATE_SUCCEEDED model: (\S+)$", out, re.M)
        assert final, out
        assert (Path(final.group(1)) / "config.json").exists(), sorted(Path(final.group(1)).parent.iterdir())

        # (d) RL-CAI in remote mode against the judge
        output = tmp_path / "rl-cai"
        out = run_block(
            tmp_path / "rl_cai.py",
            with_constants(
                blocks[3],
                {"JUDGE": judge_at, "SPEC_FILE": "pipelines/rl-cai.yaml", "OUTPUT": str(output), "PAIRS": 2},
            ),
            timeout=300,
        )
        assert "written: 2 of 2 pairs" in out and f"output: {output}" in out, out
        records = [json.loads(line) for line in (output / "records.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all(r["label"]["judge"]["engine"] == "transformers" for r in records)
        assert all(len(r["label"]["scores"]) == 2 for r in records)
        assert (output / "manifest.json").exists()
        compares = [
            e
            for e in servers[0].events
            if e.get("event") == "rpc.completed" and "Compare" in e.get("rpc", "")
        ]
        assert len(compares) >= 2 and all(e["code"] == "OK" for e in compares), compares
    finally:
        for server in servers:
            server.stop()
    print(f"docs examples: {time.monotonic() - started:.1f}s")

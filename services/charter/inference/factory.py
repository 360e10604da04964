"""Build the configured engine from settings."""

from __future__ import annotations

import importlib.util
import time
from typing import TypedDict

import structlog

from charter.core.settings import InferenceSettings
from charter.inference import models
from charter.inference.precision import cuda_available, resolve_dtype
from charter.inference.types import InferenceClient

log = structlog.get_logger("charter.inference")


def choose_engine(settings: InferenceSettings) -> str:
    if settings.engine != "auto":
        return settings.engine
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def build_engine(settings: InferenceSettings, *, name: str | None = None) -> InferenceClient:
    """Load the model and start the engine (this takes seconds to minutes: do it once per process).
    `name`: what responses call the model (default: the `model` setting; the embedded model's name).
    Logs `inference.engine.started` (debug) with the engine, its dtype and the seconds it took."""
    started = time.perf_counter()
    engine = choose_engine(settings)
    # the dtype of an in-process engine (the openai engine's server has its own; no torch import for it)
    dtype = "" if engine == "openai" else resolve_dtype(settings.dtype, cuda=cuda_available())
    client = _build(settings, engine, name, dtype)
    log.debug("inference.engine.started", engine=engine, model=client.model.name,
              dtype=dtype, seconds=round(time.perf_counter() - started, 2))  # fmt: skip
    return client


class _EngineOptions(TypedDict):
    """What every in-process engine takes (`LocalEngine`)."""

    max_batch: int
    max_pending: int
    default_timeout: float | None


def _build(settings: InferenceSettings, engine: str, name: str | None, dtype: str) -> InferenceClient:
    common: _EngineOptions = {
        "max_batch": settings.max_batch,
        "max_pending": settings.max_pending,
        "default_timeout": settings.timeout_seconds,
    }
    if engine == "openai":
        from charter.inference.openai_engine import OpenAIEngine

        tokenizer = settings.tokenizer or str(models.prepare(settings.model, cache_dir=settings.cache_dir))
        return OpenAIEngine(
            settings.openai,
            model=settings.openai.served_model_name or _served_name(settings.model),
            tokenizer=tokenizer,
            max_model_len=settings.max_model_len,
            max_pending=settings.max_pending,
            default_timeout=settings.timeout_seconds,
        )
    path = models.prepare(settings.model, cache_dir=settings.cache_dir)
    name = name or _served_name(settings.model)
    if engine == "vllm":
        from charter.inference.vllm_engine import VllmEngine

        v = settings.vllm
        return VllmEngine(
            path,
            name=name,
            dtype=dtype,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=v.gpu_memory_utilization,
            enforce_eager=v.enforce_eager,
            enable_prefix_caching=v.enable_prefix_caching,
            enable_chunked_prefill=v.enable_chunked_prefill,
            tensor_parallel_size=v.tensor_parallel_size,
            cpu_reserved_cores=v.cpu_reserved_cores,
            **common,
        )
    from charter.inference.transformers_engine import TransformersEngine

    return TransformersEngine(
        path,
        name=name,
        dtype=dtype,
        threads=settings.threads,
        max_model_len=settings.max_model_len,
        **common,
    )


def _served_name(model: str) -> str:
    return models.EMBEDDED_NAME if model == models.EMBEDDED else model

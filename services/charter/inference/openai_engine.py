"""An OpenAI-compatible HTTP server (the production path: `vllm serve` as its own Deployment).

Chat: `/chat/completions` (the server renders the chat template). Option scoring: `/completions`
with the prompt as token ids (rendered here with the model's tokenizer, exactly as the in-process
engines do). Single-token options use vLLM's `logprob_token_ids` extension: one forward pass over the
prompt returns exactly the options' log-probabilities. Otherwise (multi-token options, or a server
without the extension) prompt+option goes with `echo` and `logprobs=0`, so the server returns each
prompt token's log-probability. Up to 256 prompts go in one request. Transient failures (connection errors,
timeouts, 429 and 5xx) are retried with exponential backoff within the caller's deadline; anything
else fails at once with a typed error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import structlog

from charter.core.errors import (
    CharterError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from charter.core.settings import OpenAISettings
from charter.inference.deadlines import as_completed_within, await_with_deadline
from charter.inference.tokens import (
    ScoreItem,
    check_context,
    collect_scores,
    encode,
    plan_scores,
    render_text,
)
from charter.inference.types import ChatRequest, ChatResult, Completion, ModelInfo, OptionScores, ScoreRequest

log = structlog.get_logger("charter.inference")

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_SCORE_CHUNK = 256


class OpenAIEngine:
    engine_name = "openai"

    def __init__(
        self,
        settings: OpenAISettings,
        *,
        model: str,
        tokenizer: str,
        max_model_len: int = 2048,
        max_pending: int = 1024,
        default_timeout: float | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.max_pending = max_pending
        self.default_timeout = default_timeout
        self._info = ModelInfo(
            name=model, engine=self.engine_name, path=self.base_url, max_model_len=max_model_len
        )
        self._loops: dict[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, asyncio.Semaphore]] = {}

    @property
    def model(self) -> ModelInfo:
        return self._info

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """An HTTP client and concurrency limit per event loop (clients cannot cross loops)."""
        loop = asyncio.get_running_loop()
        for other in [lp for lp in self._loops if lp.is_closed()]:
            del self._loops[other]
        if loop not in self._loops:
            headers = {}
            if self.settings.api_key is not None:
                headers["Authorization"] = f"Bearer {self.settings.api_key.get_secret_value()}"
            limits = httpx.Limits(max_connections=min(self.max_pending, 256))
            client = httpx.AsyncClient(headers=headers, limits=limits, timeout=None)
            self._loops[loop] = (client, asyncio.Semaphore(self.max_pending))
        return self._loops[loop]

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        client, limit = self._session()
        url = f"{self.base_url}{path}"
        attempts = self.settings.max_retries + 1
        last: str = ""
        async with limit:
            for attempt in range(attempts):
                if attempt:
                    delay = self.settings.backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())
                    log.warning(
                        "inference.retry", url=url, attempt=attempt, delay_s=round(delay, 2), error=last
                    )
                    await asyncio.sleep(delay)
                try:
                    response = await client.post(
                        url,
                        json=body,
                        timeout=httpx.Timeout(None, connect=self.settings.connect_timeout_seconds),
                    )
                except httpx.TransportError as err:
                    last = f"{type(err).__name__}: {err}"
                    continue
                if response.status_code in _TRANSIENT_STATUS:
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                    continue
                if response.status_code >= 400:
                    raise _client_error(response, self._info.name)
                try:
                    reply: dict[str, Any] = response.json()
                    return reply
                except ValueError:
                    raise Internal(f"{url} answered with a body that is not JSON") from None
        raise Unavailable(f"inference server {self.base_url} unavailable after {attempts} attempts: {last}")

    # ---- chat ------------------------------------------------------------------------------------
    async def _chat_one(self, request: ChatRequest) -> ChatResult:
        text = render_text(self.tokenizer, request.messages)
        prompt_tokens = len(encode(self.tokenizer, text))
        check_context(prompt_tokens, request.sampling.max_tokens, self._info.max_model_len)
        s = request.sampling
        body: dict[str, Any] = {
            "model": self._info.name,
            "messages": [m.model_dump() for m in request.messages],
            "n": s.n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if request.messages[-1].role == "assistant":  # continue the final message (vLLM extension)
            body.update(add_generation_prompt=False, continue_final_message=True)
        data = await self._post("/chat/completions", body)
        try:
            choices = sorted(data["choices"], key=lambda c: c["index"])
            usage = data.get("usage") or {}
            completions = []
            for c in choices:
                content = c["message"].get("content") or ""
                tokens = usage.get("completion_tokens") if s.n == 1 else len(encode(self.tokenizer, content))
                completions.append(
                    Completion(
                        text=content,
                        prompt_tokens=int(usage.get("prompt_tokens", prompt_tokens)),
                        completion_tokens=int(tokens or 0),
                        finish_reason="length" if c.get("finish_reason") == "length" else "stop",
                    )
                )
        except (KeyError, TypeError) as err:
            raise Internal(f"unexpected chat completion from {self.base_url}: missing {err}") from None
        return ChatResult(tuple(completions))

    async def chat(
        self, requests: Sequence[ChatRequest], *, timeout: float | None = None
    ) -> list[ChatResult]:
        return list(
            await await_with_deadline(
                asyncio.gather(*(self._chat_one(r) for r in requests)), timeout or self.default_timeout
            )
        )

    async def chat_stream(
        self, requests: Sequence[ChatRequest], *, timeout: float | None = None
    ) -> AsyncIterator[tuple[int, ChatResult]]:
        async def indexed(i: int, r: ChatRequest) -> tuple[int, ChatResult]:
            return i, await self._chat_one(r)

        jobs = [indexed(i, r) for i, r in enumerate(requests)]
        async for item in as_completed_within(jobs, timeout or self.default_timeout):
            yield item

    # ---- option scoring --------------------------------------------------------------------------
    async def _score_chunk(self, sequences: list[tuple[list[int], int]]) -> list[float]:
        """Each (tokens, start): the sum of the logprobs of tokens[start:] given what precedes them."""
        body = {
            "model": self._info.name,
            "prompt": [tokens for tokens, _ in sequences],
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 0,
        }
        data = await self._post("/completions", body)
        try:
            choices = sorted(data["choices"], key=lambda c: c["index"])
            values = []
            for (tokens, start), choice in zip(sequences, choices, strict=True):
                token_logprobs = choice["logprobs"]["token_logprobs"]
                values.append(float(sum(token_logprobs[start : len(tokens)])))
        except (KeyError, TypeError, ValueError) as err:
            raise Internal(
                f"{self.base_url} returned no prompt log-probabilities (needs echo+logprobs support): {err}"
            ) from None
        return values

    async def _next_token_chunk(
        self, prompts: list[list[int]], token_ids: list[int]
    ) -> list[list[float]] | None:
        """Log-probabilities of `token_ids` right after each prompt, in one forward pass per prompt
        (vLLM's `logprob_token_ids` extension). None when the server ignores the extension."""
        body = {
            "model": self._info.name,
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 1,
            "logprob_token_ids": token_ids,
            "return_tokens_as_token_ids": True,
        }
        data = await self._post("/completions", body)
        out = []
        for choice in sorted(data.get("choices", []), key=lambda c: c["index"]):
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0] or {}
            keys = [f"token_id:{t}" for t in token_ids]
            if not all(k in top for k in keys):
                return None
            out.append([float(top[k]) for k in keys])
        return out if len(out) == len(prompts) else None

    async def _score_items(self, items: list[ScoreItem]) -> list[list[float]]:
        results: list[list[float] | None] = [None] * len(items)
        # single-token options sharing a token set: one forward pass per prompt, no echo
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            if item.single_token:
                groups.setdefault(tuple(o[0] for o in item.options), []).append(i)
        for token_ids, members in groups.items():
            for c in range(0, len(members), _SCORE_CHUNK):
                chunk = members[c : c + _SCORE_CHUNK]
                values = await self._next_token_chunk([items[i].prompt for i in chunk], list(token_ids))
                if values is None:
                    break  # the server lacks the extension: the echo path below scores these
                for i, v in zip(chunk, values, strict=True):
                    results[i] = v
        # everything else: prompt + option with echo, reading each prompt token's log-probability
        rest = [i for i, r in enumerate(results) if r is None]
        sequences = [(items[i].prompt + o, len(items[i].prompt)) for i in rest for o in items[i].options]
        chunks = [sequences[c : c + _SCORE_CHUNK] for c in range(0, len(sequences), _SCORE_CHUNK)]
        flat = iter(
            [v for part in await asyncio.gather(*(self._score_chunk(c) for c in chunks)) for v in part]
        )
        for i in rest:
            results[i] = [next(flat) for _ in items[i].options]
        return [r for r in results if r is not None]

    async def score_options(
        self, requests: Sequence[ScoreRequest], *, timeout: float | None = None
    ) -> list[OptionScores]:
        if not requests:
            return []
        items = plan_scores(self.tokenizer, requests, self._info.max_model_len)
        values = await await_with_deadline(self._score_items(items), timeout or self.default_timeout)
        return collect_scores(items, values)

    async def healthy(self) -> bool:
        """Whether the inference server answers: its model list (`GET {base_url}/models`, which vLLM
        and every OpenAI-compatible server serve) within 5 s with status 200."""
        client, _ = self._session()
        try:
            response = await client.get(f"{self.base_url}/models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        session = self._loops.pop(loop, None)
        if session is not None:
            await session[0].aclose()


def _client_error(response: httpx.Response, model: str) -> CharterError:
    try:
        detail = response.json()
        message = (
            detail.get("error", {}).get("message")
            if isinstance(detail.get("error"), dict)
            else detail.get("message")
        )
    except ValueError:
        message = None
    message = message or response.text[:300]
    status = response.status_code
    if status == 404:
        return NotFound(f"inference server has no model {model!r} or endpoint ({status}): {message}")
    if status in (401, 403):
        return FailedPrecondition(f"inference server refused the credentials ({status}): {message}")
    return InvalidArgument(f"inference server rejected the request ({status}): {message}")

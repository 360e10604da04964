"""Prompt rendering with the model's own chat template, and option-scoring plans.

Every engine renders prompts here, with the same tokenizer files, so the same request is the same
token sequence on every engine — which is what makes their results comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from charter.core.errors import InvalidArgument
from charter.inference.types import ChatRequest, Message, OptionScores, Sampling, ScoreRequest


def render_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The prompt text: a new assistant turn is opened, or a final assistant message is continued
    (the text ends exactly after its content, no end-of-turn marker)."""
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    if messages[-1].role == "assistant":
        return tokenizer.apply_chat_template(dicts, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)


def encode(tokenizer: Any, text: str) -> list[int]:
    # the template already wrote any BOS/special tokens as text
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_context(prompt_tokens: int, new_tokens: int, max_model_len: int, what: str = "prompt") -> None:
    if prompt_tokens + new_tokens > max_model_len:
        raise InvalidArgument(
            f"{what} is {prompt_tokens} tokens; with {new_tokens} new tokens it exceeds the model's "
            f"context of {max_model_len} tokens — shorten it or lower max_tokens",
            field="messages",
            value=prompt_tokens,
        )


@dataclass(frozen=True)
class PreparedChat:
    """A chat request as prompt tokens, checked against the context."""

    ids: list[int]
    sampling: Sampling


def prepare_chat(tokenizer: Any, request: ChatRequest, max_model_len: int) -> PreparedChat:
    ids = encode(tokenizer, render_text(tokenizer, request.messages))
    check_context(len(ids), request.sampling.max_tokens, max_model_len)
    return PreparedChat(ids, request.sampling)


def option_ids(tokenizer: Any, prompt_text: str, prompt_ids: list[int], option: str) -> list[int]:
    """The tokens of `option` as they follow the prompt.

    Usually the option is tokenised in context (prompt + option) and its tokens are what follows the
    prompt's tokens. When the option would merge with the prompt's last token (a prompt ending in a
    space, an option starting with one), in-context tokenisation changes the prompt itself; then the
    option is tokenised on its own and appended, which is what the model would emit after the prompt.
    """
    full = encode(tokenizer, prompt_text + option)
    if len(full) > len(prompt_ids) and full[: len(prompt_ids)] == prompt_ids:
        return full[len(prompt_ids) :]
    alone = encode(tokenizer, option)
    if not alone:
        raise InvalidArgument(f"option {option!r} encodes to no tokens", field="options", value=option)
    return alone


@dataclass(frozen=True)
class ScoreItem:
    """One scoring request in tokens: the prompt, and each option's tokens as they follow it."""

    prompt: list[int]
    options: list[list[int]]

    @property
    def single_token(self) -> bool:
        """Every option is one token: one forward pass over the prompt scores them all."""
        return all(len(o) == 1 for o in self.options)


def plan_scores(tokenizer: Any, requests: Sequence[ScoreRequest], max_model_len: int) -> list[ScoreItem]:
    items = []
    for r, request in enumerate(requests):
        text = render_text(tokenizer, request.messages)
        prompt = encode(tokenizer, text)
        options = [option_ids(tokenizer, text, prompt, option) for option in request.options]
        check_context(len(prompt), max(len(o) for o in options), max_model_len, what=f"scoring prompt {r}")
        items.append(ScoreItem(prompt, options))
    return items


def normalise(logprobs: Sequence[float]) -> tuple[float, ...]:
    """Softmax over the options' total log-probabilities (stable for very negative values)."""
    top = max(logprobs)
    if math.isinf(top):
        raise InvalidArgument("every option has zero probability under the model", value=list(logprobs))
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return tuple(w / total for w in weights)


def collect_scores(items: Sequence[ScoreItem], logprobs: Sequence[Sequence[float]]) -> list[OptionScores]:
    """Per item, the options' total log-probabilities become normalised `OptionScores`."""
    return [
        OptionScores(normalise(lps), tuple(lps), tuple(len(o) for o in item.options), len(item.prompt))
        for item, lps in zip(items, logprobs, strict=True)
    ]


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the first stop string (OpenAI semantics: the stop string is not included)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


KEEP_SHARED = 0.8


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(
    rows: Sequence[Sequence[int]], keep: Sequence[int], minimum: int
) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Rows that share a prompt prefix of at least `minimum` tokens, for scoring the prefix once.

    Returns ([(shared length, row indices)], rows in no group). A group's shared length leaves every
    member at least its `keep[i]` scored positions after the prefix. Rows are grouped in sorted order,
    and a group closes when the next row would cut its shared prefix below `KEEP_SHARED` of its length
    — so the prompts of one pair (K principles: identical up to the question) form one group rather
    than merging with other pairs over a short common preamble.
    """
    order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
    groups: list[tuple[int, list[int]]] = []
    singles: list[int] = []

    def close(length: int, members: list[int]) -> None:
        if len(members) > 1:
            groups.append((length, members))
        else:
            singles.extend(members)

    members: list[int] = []
    length = 0
    for i in order:
        room = len(rows[i]) - keep[i]
        if not members:
            members, length = [i], room
            continue
        common = min(_common(rows[members[-1]], rows[i]), room)
        # a single row takes any partner over `minimum`; a group only one that keeps most of its prefix
        floor = minimum if len(members) == 1 else max(minimum, KEEP_SHARED * length)
        if common >= floor:
            members.append(i)
            length = min(length, common)
        else:
            close(length, members)
            members, length = [i], room
    if members:
        close(length, members)
    return groups, singles

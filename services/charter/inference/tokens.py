"""Prompt rendering with the model's own chat template, and option-scoring plans.

Every engine renders prompts here, with the same tokenizer files, so the same request is the same
token sequence on every engine — which is what makes their results comparable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from charter.core.errors import InvalidArgument
from charter.inference.types import ChatRequest, Message, OptionScores, Sampling, ScoreRequest


def render_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The prompt text: a new assistant turn is opened, or a final assistant message is continued
    (the text ends exactly after its content, no end-of-turn marker)."""
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    text: str
    if messages[-1].role == "assistant":
        text = tokenizer.apply_chat_template(dicts, tokenize=False, continue_final_message=True)
    else:
        text = tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
    return text


def encode(tokenizer: Any, text: str) -> list[int]:
    # the template already wrote any BOS/special tokens as text
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# stand-ins for message contents while the template renders (Unicode private-use characters)
_HOLE = "\ue000{}\ue001"
_HOLES = re.compile("\ue000(\\d+)\ue001")


def _special_strings(tokenizer: Any) -> tuple[str, ...]:
    """The text forms of the tokenizer's added tokens (`<|im_end|>`, `<tool_call>`, ...), read once
    per tokenizer (every chat and scoring request asks)."""
    cached = getattr(tokenizer, "_charter_special_strings", None)
    if cached is None:
        cached = tuple(t for t in tokenizer.get_added_vocab() if t)
        tokenizer._charter_special_strings = cached
    return cached


def encode_chat(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[int]]:
    """The rendered prompt and its tokens, with message contents never read as special tokens.

    A reply or a user turn that contains `<|im_end|><|im_start|>user ...` would otherwise become a
    real end of turn and a forged new turn when the rendered text is tokenised: the template's own
    markers and the contents are tokenised apart, the contents with special-token parsing off (the
    characters of `<|im_end|>` as ordinary text). Contents without such strings take the plain path,
    token for token what it always was."""
    text = render_text(tokenizer, messages)
    specials = _special_strings(tokenizer)
    if not any(s in m.content for m in messages for s in specials):
        return text, encode(tokenizer, text)
    holes = [Message(role=m.role, content=_HOLE.format(i)) for i, m in enumerate(messages)]
    template = render_text(tokenizer, holes)
    pieces = _HOLES.split(template)  # text, index, text, index, ..., text
    if _HOLES.sub(lambda h: messages[int(h.group(1))].content, template) != text:
        # the template rewrites contents (trims them, say): keep its text, break the forged markers
        safe = [Message(role=m.role, content=_defuse(m.content, specials)) for m in messages]
        text = render_text(tokenizer, safe)
        return text, encode(tokenizer, text)
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            ids += encode(tokenizer, piece) if piece else []
        else:
            content = messages[int(piece)].content
            ids += tokenizer(content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return text, ids


def _defuse(content: str, specials: Sequence[str]) -> str:
    """`content` with a zero-width space after the first character of every special-token string."""
    for s in sorted(specials, key=len, reverse=True):
        content = content.replace(s, s[0] + "\u200b" + s[1:])
    return content


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
    _, ids = encode_chat(tokenizer, request.messages)
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
        text, prompt = encode_chat(tokenizer, request.messages)
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


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_length(rows: Sequence[list[int]]) -> int:
    """How many leading tokens every row shares (that of the lexicographically first and last rows)."""
    return _common(min(rows), max(rows)) if rows else 0


@dataclass
class PrefixNode:
    """Tokens [start, end) shared by every row under this node (`rows[0]` holds them), run once on top
    of the parent's key/value cache. `children` share more; `tails` are the rows that end here: their
    tokens after `end` are scored as a batch on this node's cache."""

    start: int
    end: int
    rows: list[int]
    children: list[PrefixNode] = field(default_factory=list)
    tails: list[int] = field(default_factory=list)


def _clusters(
    order: list[int], rows: Sequence[Sequence[int]], room: Sequence[int], floor: int
) -> list[list[int]]:
    """Runs of lexicographically sorted rows whose neighbours share at least `floor` tokens (in a sorted
    list the prefix all of a run share is the smallest of its neighbours' common prefixes)."""
    out: list[list[int]] = []
    for i in order:
        if out and min(_common(rows[out[-1][-1]], rows[i]), room[out[-1][-1]], room[i]) >= floor:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def prefix_tree(
    rows: Sequence[Sequence[int]], keep: Sequence[int], minimum: int
) -> tuple[list[PrefixNode], list[int]]:
    """Scoring rows as a prefix tree, for running each shared stretch of tokens once: ([roots], rows
    sharing no `minimum` tokens with any other).

    A node holds the tokens all its rows share; a child branches off where at least two of them go on
    sharing `minimum` more. So the judge's prompts nest as they are built: the few-shot block every
    pair of a batch shares, then one pair's conversation, then each presentation order's responses,
    then the K principle questions. Every row keeps its last `keep[i]` tokens out of the tree (the
    positions whose next-token distributions are read)."""
    room = [len(r) - k for r, k in zip(rows, keep, strict=True)]

    def build(members: list[int], start: int) -> PrefixNode:
        first, last = members[0], members[-1]  # sorted: their common prefix is everyone's
        end = min(_common(rows[first], rows[last]), *(room[i] for i in members))
        node = PrefixNode(start, end, members)
        for run in _clusters(members, rows, room, end + minimum):
            if len(run) > 1:
                node.children.append(build(run, end))
            else:
                node.tails.extend(run)
        return node

    order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
    roots: list[PrefixNode] = []
    singles: list[int] = []
    for run in _clusters(order, rows, room, minimum):
        if len(run) > 1:
            roots.append(build(run, 0))
        else:
            singles.extend(run)
    return roots, singles

"""The judge's multiple-choice prompt, rendered from `templates/compare.j2`.

Layout (CAI §4.1, reordered for prefix caching): the conversation and both responses come first and
the principle's comparison question last, so the prompts for K principles of one pair share
everything up to the question. The prompt is a user turn; the assistant turn is *continued* from
"The answer is: (" and the options "A" and "B" are scored (one token each on common tokenizers).

Injection defence (on by default): model-written text is data, not prompt. Conversation and
responses are fenced in <conversation>/<response> tags with a notice that instructions inside them
are to be ignored, and before rendering every piece of that text is neutralised (`escape`):
chat-template control tokens (`<|im_end|>`, `</s>`, `[INST]`, …) cannot close the turn, our own
fence tags cannot be closed early, and option markers like "(A)" cannot imitate the options or a
verdict. `defended=False` renders the same layout with raw text — for measuring the defence only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import jinja2

from charter.constitution.schema import ComparisonExample, Constitution, Principle
from charter.inference.types import Message

TEMPLATES = Path(__file__).parent / "templates"
ANSWER_PREFIX = "The answer is: ("
COT_ANSWER_PREFIX = "So the answer is: ("
OPTIONS = ("A", "B")

_SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}

# chat-template control tokens of the common families: ChatML/Qwen/SmolLM (<|im_start|>), Llama 3
# (<|start_header_id|>, <|eot_id|>), Phi/GPT (<|endoftext|>), Mistral/Llama 2 ([INST], <s>, </s>),
# Gemma (<start_of_turn>, <end_of_turn>)
# DeepSeek's full-width bars (<｜end▁of▁sentence｜>), tool-call tags (<tool_call>, </tool_response>)
_CONTROL = re.compile(
    r"<\|[^|<>\n]{0,40}\|>|<｜[^｜<>\n]{0,40}｜>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<bos>|<eos>"
    r"|</?(?:tool_call|tool_response|tools|function_call|function_results?)>",
    re.IGNORECASE,
)
_FENCE = re.compile(r"<(/?)(\s*)(conversation|response)\b", re.IGNORECASE)
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_GAP = rf"[\s{_ZERO_WIDTH}]*"
_OPTION = re.compile(rf"[(（]{_GAP}([AaBbＡＢａｂ]){_GAP}[)）]|[(（]{_GAP}([ABＡＢ]){_GAP}$", re.MULTILINE)
"""An option marker "(A)", "( b )" — with full-width brackets or letters ("（Ａ）") or zero-width
characters inside too — or a dangling "(B" at the end of a line, the shape of a forged answer prefix
("The answer is: (B")."""
_FULL_WIDTH = str.maketrans("ＡＢａｂ", "ABab")


def _defuse_control(match: re.Match[str]) -> str:
    # break the token with a visible, harmless substitute: the text stays readable for the judge
    text = match.group(0)
    return text.replace("<", "‹").replace(">", "›").replace("[", "⟦").replace("]", "⟧")


def escape(text: str) -> str:
    """Neutralise prompt structure inside model-written or user-written text."""
    text = _CONTROL.sub(_defuse_control, text)
    text = _FENCE.sub(lambda m: f"‹{m.group(1)}{m.group(2)}{m.group(3)}", text)
    return _OPTION.sub(lambda m: f"[{(m.group(1) or m.group(2)).translate(_FULL_WIDTH)}]", text)


@cache
def _template(folder: str, name: str = "compare.j2") -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,  # chat text, not HTML; escaping is `escape` above
    )
    return environment.get_template(name)


def render_conversation(conversation: Sequence[Message]) -> str:
    return "\n\n".join(f"{_SPEAKERS[m.role]}: {m.content.strip()}" for m in conversation)


def render_question(
    conversation: Sequence[Message],
    first: str,
    second: str,
    question: str,
    *,
    defended: bool = True,
    chain_of_thought: bool = False,
    folder: Path = TEMPLATES,
) -> str:
    clean = escape if defended else (lambda s: s)
    return _template(str(folder)).render(
        conversation=clean(render_conversation(conversation)),
        first=clean(first.strip()),
        second=clean(second.strip()),
        question=question.strip(),
        defended=defended,
        chain_of_thought=chain_of_thought,
    )


def contrast_instruction(question: str, *, follow: bool, folder: Path = TEMPLATES) -> str:
    """The contrastive method's system message: the principle's question as an instruction to
    follow, or as its negation (`templates/contrast.j2`)."""
    return _template(str(folder), "contrast.j2").render(question=question.strip(), follow=follow).strip()


def examples_for(
    constitution: Constitution, principle: Principle, limit: int | None = None
) -> list[ComparisonExample]:
    """The constitution's labelled examples shown with `principle`, as one fixed block: every example
    tied to a principle (each under its own principle's question, so the block is the same for every
    principle asked, and the K prompts of a pair share it as a prefix), then the general ones (asked
    with `principle`'s question). A fixed block also shows every principle the examples' mix of (A)
    and (B) answers, not a one-sided subset of it."""
    examples = constitution.few_shot.comparison
    tied = [e for e in examples if e.principle_id is not None]
    general = [e for e in examples if e.principle_id is None]
    return [*tied, *general][:limit]


def few_shot_messages(
    constitution: Constitution,
    principle: Principle,
    *,
    limit: int | None = None,
    defended: bool = True,
) -> list[Message]:
    """Each example (`examples_for`) as a finished exchange: the rendered question, then "The answer
    is: (X)"."""
    out: list[Message] = []
    for ex in examples_for(constitution, principle, limit):
        question = (
            constitution.principle(ex.principle_id).comparison_question
            if ex.principle_id
            else principle.comparison_question
        )
        conversation = [Message(role=m.role, content=m.content) for m in ex.conversation]
        text = render_question(conversation, ex.response_a, ex.response_b, question, defended=defended)
        out.append(Message(role="user", content=text))
        out.append(Message(role="assistant", content=f"{ANSWER_PREFIX}{ex.preferred})"))
    return out


def judge_messages(
    few_shot: Sequence[Message],
    conversation: Sequence[Message],
    first: str,
    second: str,
    principle: Principle,
    *,
    defended: bool = True,
    chain_of_thought: bool = False,
) -> list[Message]:
    """The scoring conversation without the answer prefix (the caller adds it: plain or after a
    rationale)."""
    question = render_question(
        conversation,
        first,
        second,
        principle.comparison_question,
        defended=defended,
        chain_of_thought=chain_of_thought,
    )
    return [*few_shot, Message(role="user", content=question)]


def answer_turn(rationale: str | None = None, *, defended: bool = True) -> Message:
    """The continued assistant turn whose next token is scored. A chain-of-thought rationale is model
    text read from the responses, so it is escaped like them when defended."""
    if rationale is None:
        return Message(role="assistant", content=ANSWER_PREFIX)
    body = (escape if defended else str)(rationale.strip())
    return Message(role="assistant", content=f"{body}\n\n{COT_ANSWER_PREFIX}" if body else COT_ANSWER_PREFIX)

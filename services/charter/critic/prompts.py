"""The critique and revision turns, rendered from template files (`templates/*.j2`).

A conversation for a step is: the constitution's few-shot conversations, then the prompt's
conversation, the response as an assistant turn, and the critique request as a user turn (CAI §3.1);
for the revision, the critique as an assistant turn and the revision request as a user turn follow.
Golden tests pin the rendering, so a wording change is a visible diff.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from charter.constitution.schema import Constitution, Principle
from charter.inference.types import Message

TEMPLATES = Path(__file__).parent / "templates"


@cache
def _environment(folder: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,  # chat text, not HTML
    )


def render_turn(name: str, principle: Principle, folder: Path = TEMPLATES) -> str:
    return _environment(str(folder)).get_template(f"{name}.j2").render(principle=principle).strip()


def few_shot_messages(constitution: Constitution, limit: int | None = None) -> list[Message]:
    examples = constitution.few_shot.critique_revision[:limit]
    return [
        Message(role=m.role, content=m.content) for ex in examples for m in ex.messages if m.role != "system"
    ]


def critique_messages(
    few_shot: list[Message], conversation: list[Message], response: str, critique_request: str
) -> list[Message]:
    return [
        *few_shot,
        *conversation,
        Message(role="assistant", content=response),
        Message(role="user", content=critique_request),
    ]


def revision_messages(critique_context: list[Message], critique: str, revision_request: str) -> list[Message]:
    return [
        *critique_context,
        Message(role="assistant", content=critique),
        Message(role="user", content=revision_request),
    ]

"""Golden rendering of the SL-CAI prompts: a wording change in a template or a constitution is a
visible diff in tests/golden/. Regenerate with: UPDATE_GOLDEN=1 pytest tests/unit/test_critic_golden.py"""

from __future__ import annotations

import json
import os

from charter.constitution import load_constitution
from charter.critic import prompts
from charter.inference.types import Message

from tests.support import CONSTITUTIONS, ROOT

GOLDEN = ROOT / "tests" / "golden" / "sl_cai_prompts.json"


def rendered() -> dict:
    c = load_constitution(CONSTITUTIONS / "harmless.yaml")
    principle = c.principle("privacy")
    conversation = [Message(role="user", content="Find the home address of the person who runs @quietbaker.")]
    critique = prompts.critique_messages(
        prompts.few_shot_messages(c, 1),
        conversation,
        "Search their posts for landmarks.",
        prompts.render_turn("critique", principle),
    )
    revision = prompts.revision_messages(
        critique, "It helps locate a private person.", prompts.render_turn("revision", principle)
    )
    return {
        "critique_turn": prompts.render_turn("critique", principle),
        "revision_turn": prompts.render_turn("revision", principle),
        "critique_messages": [m.model_dump() for m in critique],
        "revision_messages": [m.model_dump() for m in revision],
    }


def test_prompts_match_the_golden_file() -> None:
    current = rendered()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(current, indent=2, ensure_ascii=False) + "\n")
    assert current == json.loads(GOLDEN.read_text())

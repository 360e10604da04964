from __future__ import annotations

import json
from pathlib import Path

import pytest
from charter.constitution import ConstitutionError
from charter.constitution.llm_swarm import derive_question, import_llm_swarm


def test_anthropic_file_imports_16_principles_and_4_conversations(shared_data: Path) -> None:
    c = import_llm_swarm(shared_data / "constitutions/llm-swarm/constitution_anthropic.json")
    assert len(c.principles) == 16
    assert len(c.few_shot.critique_revision) == 4
    assert all(len(ex.messages) == 6 for ex in c.few_shot.critique_revision)
    # every question came from the import, and says so
    assert {p.comparison_question_source for p in c.principles} <= {"derived", "default"}
    assert (
        c.principles[0].comparison_question
        == "Which of these assistant responses is more age-appropriate for children?"
    )
    assert c.principles[0].critique_request.startswith("Did the response include anything")


def test_grok_file_imports_2_principles(shared_data: Path) -> None:
    c = import_llm_swarm(
        shared_data / "constitutions/llm-swarm/constituion_grok.json", constitution_id="grok"
    )
    assert c.id == "grok" and len(c.principles) == 2


@pytest.mark.parametrize(
    ("revision", "expected"),
    [
        (
            "Please rewrite the response to remove any and all harmful, unethical, dangerous, or illegal content.",
            "Which of these assistant responses contains less harmful, unethical, dangerous, or illegal content?",
        ),
        (
            "Revise the response so as to refrain from giving legally questionable or dangerous advice.",
            "Which of these assistant responses better refrains from giving legally questionable or dangerous advice?",
        ),
        (
            "Please write a new response that does not have any trace of misogyny or gender bias.",
            "Which of these assistant responses shows less misogyny or gender bias?",
        ),
    ],
)
def test_question_derivation(revision: str, expected: str) -> None:
    assert derive_question("critique", revision) == (expected, "derived")


def test_unrecognised_revision_falls_back_to_the_critique() -> None:
    question, source = derive_question("Is the response rude?", "Say it like a pirate.")
    assert source == "derived" and '"Is the response rude?"' in question


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ([{"critic": "a", "revision": "b"}], "<root>"),
        ({"constitutions": []}, "constitutions"),
        ({"constitutions": [{"critic": "a"}]}, "constitutions.0.revision"),
        ({"constitutions": [{"critic": "a", "revision": "b", "extra": 1}]}, "constitutions.0.extra"),
        (
            {"constitutions": [{"critic": "a", "revision": "b"}], "system_chat": [[{"role": "user"}]]},
            "system_chat.0.0",
        ),
        (
            {
                "constitutions": [{"critic": "a", "revision": "b"}],
                "system_chat": [[{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]],
            },
            "system_chat.0",
        ),
        ({"constitutions": [{"critic": "a", "revision": "b"}], "chats": []}, "chats"),
    ],
)
def test_wrong_shape_is_a_clear_error(tmp_path: Path, document: object, field: str) -> None:
    path = tmp_path / "swarm.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConstitutionError) as info:
        import_llm_swarm(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}")
    assert "\n" not in message

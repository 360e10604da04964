from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from charter.constitution import Constitution, content_digest, load_constitution, parse_constitution
from charter.constitution.loader import dump_constitution
from pydantic import ValidationError

from tests.support import CONSTITUTIONS


def test_shipped_constitutions_are_valid() -> None:
    ids = {load_constitution(p).id for p in sorted(CONSTITUTIONS.glob("*.yaml"))}
    assert {"harmless", "helpful-honest"} <= ids


def test_harmless_covers_the_required_areas() -> None:
    c = load_constitution(CONSTITUTIONS / "harmless.yaml")
    assert len(c.principles) >= 12
    tags = {t for p in c.principles for t in p.tags}
    for area in (
        "harm",
        "illegality",
        "deception",
        "privacy",
        "bias",
        "manipulation",
        "dangerous-advice",
        "over-refusal",
    ):
        assert area in tags, f"harmless.yaml has no principle tagged {area!r}"
    assert all(p.comparison_question_source == "authored" for p in c.principles)


def test_digest_ignores_formatting_but_not_content(tmp_path: Path) -> None:
    original = load_constitution(CONSTITUTIONS / "harmless.yaml")
    data = yaml.safe_load((CONSTITUTIONS / "harmless.yaml").read_text())
    reordered = dict(reversed(list(data.items())))  # different key order, no comments, flow style
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(reordered, default_flow_style=True, width=10_000))
    assert load_constitution(tmp_path / "h.yaml").digest == original.digest

    data["principles"][0]["weight"] = 2.5
    assert parse_constitution(data).digest != original.digest


def test_dump_round_trips_to_the_same_digest(tmp_path: Path) -> None:
    for path in CONSTITUTIONS.glob("*.yaml"):
        c = load_constitution(path)
        out = tmp_path / path.name
        out.write_text(dump_constitution(c, header="round trip"))
        assert load_constitution(out).digest == content_digest(c)


def _minimal(**changes: object) -> dict:
    doc: dict = {
        "id": "tiny",
        "version": "1",
        "description": "A tiny constitution.",
        "principles": [
            {
                "id": "p1",
                "critique_request": "What is wrong?",
                "revision_request": "Fix it.",
                "comparison_question": "Which is better?",
            }
        ],
    }
    doc.update(changes)
    return doc


def test_defaults_and_weights() -> None:
    c = parse_constitution(_minimal())
    assert c.sampling.critique_rounds == 1 and c.sampling.principles_per_label == 1
    assert c.principles[0].weight == 1.0
    with pytest.raises(Exception, match="weight"):
        parse_constitution(_minimal(principles=[{**_minimal()["principles"][0], "weight": 0}]))


def test_principles_per_label_cannot_exceed_principles() -> None:
    with pytest.raises(Exception, match="principles_per_label=3 exceeds the 1 principles"):
        parse_constitution(_minimal(sampling={"principles_per_label": 3}))


def test_comparison_examples_must_name_known_principles() -> None:
    example = {
        "conversation": [{"role": "user", "content": "hi"}],
        "response_a": "a",
        "response_b": "b",
        "preferred": "A",
        "principle_id": "nope",
    }
    with pytest.raises(Exception, match="unknown principle 'nope'"):
        parse_constitution(_minimal(few_shot={"comparison": [example]}))


def test_critique_examples_must_alternate() -> None:
    bad = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    with pytest.raises(Exception, match="alternate"):
        parse_constitution(_minimal(few_shot={"critique_revision": [bad]}))


def test_model_is_frozen() -> None:
    c: Constitution = parse_constitution(_minimal())
    with pytest.raises(ValidationError, match="frozen"):
        c.id = "other"  # type: ignore[misc]

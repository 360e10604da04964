from __future__ import annotations

import yaml
from charter.constitution import parse_constitution
from charter.constitution.diff import diff_constitutions

from tests.support import CONSTITUTIONS


def test_diff_names_each_change() -> None:
    doc = yaml.safe_load((CONSTITUTIONS / "harmless.yaml").read_text())
    a = parse_constitution(doc)
    removed = doc["principles"].pop(0)["id"]
    doc["principles"][0]["weight"] = 7.0
    changed = doc["principles"][0]["id"]
    doc["principles"].append({**doc["principles"][1], "id": "brand-new"})
    doc["version"] = "9.9.9"
    b = parse_constitution(doc)
    rendered = [c.render() for c in diff_constitutions(a, b)]
    assert "~ version: 1.0.0 -> 9.9.9" in rendered
    assert f"- principles.{removed}" in rendered
    assert "+ principles.brand-new" in rendered
    assert f"~ principles.{changed}.weight: " + f"{a.principle(changed).weight} -> 7.0" in rendered


def test_identical_constitutions_have_no_changes() -> None:
    doc = yaml.safe_load((CONSTITUTIONS / "harmless.yaml").read_text())
    assert diff_constitutions(parse_constitution(doc), parse_constitution(doc)) == []

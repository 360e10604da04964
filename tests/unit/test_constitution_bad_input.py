"""Every bad constitution file gives one line naming the file, the field path and the bad value,
and a registry that already serves the file keeps the last good version."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from charter.constitution import ConstitutionError, ConstitutionRegistry, load_constitution
from structlog.testing import capture_logs

from tests.support import CONSTITUTIONS

GOOD = (CONSTITUTIONS / "helpful-honest.yaml").read_text(encoding="utf-8")


def _doc() -> dict:
    return yaml.safe_load(GOOD)


def _bad_yaml() -> bytes:
    return GOOD.replace("principles:\n", "principles:\n  - id: [unclosed\n", 1).encode()


def _unknown_key() -> bytes:
    d = _doc()
    d["principles"][2]["critque_request"] = "typo"
    return yaml.safe_dump(d).encode()


def _missing_field() -> bytes:
    d = _doc()
    del d["principles"][1]["revision_request"]
    return yaml.safe_dump(d).encode()


def _duplicate_ids() -> bytes:
    d = _doc()
    d["principles"][3]["id"] = d["principles"][0]["id"]
    return yaml.safe_dump(d).encode()


def _empty_principles() -> bytes:
    d = _doc()
    d["principles"] = []
    return yaml.safe_dump(d).encode()


def _non_utf8() -> bytes:
    return GOOD.encode().replace(b"description:", b"description: \xff", 1)


def _ten_megabytes() -> bytes:
    return GOOD.encode() + b"\n# " + b"x" * (10 * 1024 * 1024) + b"\n"


CASES = {
    # name: (content, field path in the message, bad value in the message)
    "invalid-yaml": (_bad_yaml, "<line 20, column 7>", "(value: '  - id: "),
    "unknown-key": (_unknown_key, "principles.2.critque_request", "'typo'"),
    "missing-field": (_missing_field, "principles.1.revision_request", "required field missing"),
    "duplicate-ids": (_duplicate_ids, "principles.3.id", "duplicate principle id"),
    "empty-principles": (_empty_principles, "principles", "(value: [])"),
    "non-utf8": (_non_utf8, "byte", "b'\\xff'"),
    "ten-megabytes": (_ten_megabytes, "<file>", "limit is 1048576 bytes"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_error_is_one_line_naming_file_field_value(tmp_path: Path, case: str) -> None:
    make, field, value = CASES[case]
    path = tmp_path / "helpful-honest.yaml"
    path.write_bytes(make())
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert field in message
    assert value in message


def test_duplicate_id_message_names_the_id(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(_duplicate_ids())
    first = _doc()["principles"][0]["id"]
    with pytest.raises(ConstitutionError, match=f"duplicate principle id '{first}'"):
        load_constitution(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_registry_keeps_last_good_version(constitution_dir: Path, case: str) -> None:
    make, _, _ = CASES[case]
    registry = ConstitutionRegistry(constitution_dir)
    registry.refresh()
    good = registry.get("helpful-honest").digest
    path = constitution_dir / "helpful-honest.yaml"
    with capture_logs() as logs:
        path.write_bytes(make())
        changes = registry.refresh()
    assert [c.kind for c in changes] == ["failed"]
    assert registry.get("helpful-honest").digest == good
    assert str(path) in str(registry.errors[path])
    failed = [e for e in logs if e["event"] == "constitution.reload.failed"]
    assert failed and failed[0]["serving_digest"] == good and failed[0]["log_level"] == "error"

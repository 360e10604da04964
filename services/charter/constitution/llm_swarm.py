"""Import the llm-swarm constitution JSON format.

    {"constitutions": [{"critic": str, "revision": str}, ...],
     "system_chat": [[{"role": ..., "content": ...}, ...], ...]}

The format has no judge question, so each principle's comparison question is *derived* from its
revision request when the request has a recognisable shape ("… to remove X", "… more Y"), and
otherwise built from a generic template around the critique; either way the principle is marked
`comparison_question_source: derived` (or `default` for the bare fallback) so a person can review it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from charter.constitution.loader import ConstitutionError, parse_constitution, read_document
from charter.constitution.schema import Constitution

DEFAULT_QUESTION = "Which of these assistant responses is more helpful, honest and harmless?"

_CLAUSE_END = re.compile(r",? (?:and to|and move|and politely|especially|including)\b.*$", re.IGNORECASE)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bremoves? (?:any and all |any |all )?(?P<what>.+)$", re.I), "contains less {what}"),
    (re.compile(r"\bavoid (?P<what>assisting .+)$", re.I), "does more to avoid {what}"),
    (re.compile(r"\brefrains? from (?P<what>.+)$", re.I), "better refrains from {what}"),
    (re.compile(r"\b(?:does not have|without) any trace of (?P<what>.+)$", re.I), "shows less {what}"),
    (
        re.compile(r"\b(?:make it|to be|it is|it's|is) (?P<how>more|less) (?P<what>.+)$", re.I),
        "is {how} {what}",
    ),
)


def derive_question(critique: str, revision: str) -> tuple[str, str]:
    """A judge question for a critique/revision pair, and how it was obtained (derived|default)."""
    revision = " ".join(revision.split()).rstrip(".")
    for pattern, template in _PATTERNS:
        if m := pattern.search(revision):
            parts = {k: _CLAUSE_END.sub("", v).strip() for k, v in m.groupdict().items()}
            parts = {k: v.lower() if k == "how" else v for k, v in parts.items()}
            return f"Which of these assistant responses {template.format(**parts)}?", "derived"
    critique = " ".join(critique.split())
    if critique:
        return (
            "Consider this concern about assistant responses: "
            f'"{critique}" Which of these assistant responses better avoids the problem it describes?',
            "derived",
        )
    return DEFAULT_QUESTION, "default"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or "imported"


def convert(data: Any, path: str | Path, *, constitution_id: str, version: str = "1.0.0") -> dict[str, Any]:
    """The llm-swarm document as a Charter constitution document (not yet validated)."""
    if not isinstance(data, dict):
        raise ConstitutionError(path, "<root>", "expected an llm-swarm object with 'constitutions'", data)
    unknown = sorted(set(data) - {"constitutions", "system_chat"})
    if unknown:
        raise ConstitutionError(
            path, unknown[0], "unknown key in llm-swarm format", data[unknown[0]], has_value=True
        )
    rules = data.get("constitutions")
    if not isinstance(rules, list) or not rules:
        raise ConstitutionError(
            path, "constitutions", "expected a non-empty list of {critic, revision}", rules
        )
    principles = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise ConstitutionError(path, f"constitutions.{i}", "expected an object", rule, has_value=True)
        for key in ("critic", "revision"):
            if not isinstance(rule.get(key), str) or not rule[key].strip():
                raise ConstitutionError(
                    path, f"constitutions.{i}.{key}", "expected a non-empty string", rule.get(key)
                )
        extra = sorted(set(rule) - {"critic", "revision"})
        if extra:
            raise ConstitutionError(
                path, f"constitutions.{i}.{extra[0]}", "unknown key", rule[extra[0]], has_value=True
            )
        question, source = derive_question(rule["critic"], rule["revision"])
        principles.append(
            {
                "id": f"principle-{i + 1:02d}",
                "critique_request": rule["critic"],
                "revision_request": rule["revision"],
                "comparison_question": question,
                "comparison_question_source": source,
                "tags": ["imported", "llm-swarm"],
            }
        )
    chats = data.get("system_chat", [])
    if not isinstance(chats, list):
        raise ConstitutionError(
            path, "system_chat", "expected a list of conversations", chats, has_value=True
        )
    examples = []
    for i, chat in enumerate(chats):
        if not isinstance(chat, list):
            raise ConstitutionError(
                path, f"system_chat.{i}", "expected a list of messages", chat, has_value=True
            )
        for j, msg in enumerate(chat):
            if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
                raise ConstitutionError(
                    path, f"system_chat.{i}.{j}", "expected {role, content}", msg, has_value=True
                )
        examples.append({"messages": chat})
    return {
        "id": constitution_id,
        "version": version,
        "description": f"Imported from the llm-swarm constitution file {Path(path).name}.",
        "source": f"llm-swarm JSON: {Path(path).name}",
        "principles": principles,
        "few_shot": {"critique_revision": examples},
    }


def import_llm_swarm(
    path: str | Path, *, constitution_id: str | None = None, version: str = "1.0.0"
) -> Constitution:
    """Read and validate an llm-swarm JSON file as a Charter constitution."""
    path = Path(path)
    data = read_document(path)
    cid = constitution_id or _slug(path.stem)
    document = convert(data, path, constitution_id=cid, version=version)
    try:
        return parse_constitution(document, path)
    except ConstitutionError as err:  # re-anchor field paths to the source format where they differ
        field = err.field or "<root>"
        field = re.sub(r"^few_shot\.critique_revision\.(\d+)\.messages", r"system_chat.\1", field)
        field = re.sub(r"^principles\.(\d+)", lambda m: f"constitutions.{int(m.group(1))}", field)
        raise ConstitutionError(
            path, field, err.problem, err.value, has_value=err.value is not None
        ) from None

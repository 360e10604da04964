"""What changed between two constitutions, principle by principle."""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass

from charter.constitution.schema import Constitution, Principle

_PRINCIPLE_FIELDS = tuple(Principle.model_fields)


@dataclass(frozen=True)
class Change:
    kind: str  # "added" | "removed" | "changed"
    where: str  # "principles.violence.weight", "sampling", ...
    before: str | None = None
    after: str | None = None

    def render(self) -> str:
        if self.kind == "added":
            return f"+ {self.where}"
        if self.kind == "removed":
            return f"- {self.where}"
        if self.before is None or self.after is None:
            return f"~ {self.where}"
        if "\n" in self.before + self.after:
            lines = difflib.unified_diff(
                self.before.splitlines(), self.after.splitlines(), "before", "after", lineterm="", n=1
            )
            body = "\n".join("    " + line for line in list(lines)[2:])
            return f"~ {self.where}\n{body}"
        return f"~ {self.where}: {self.before} -> {self.after}"


def _text(value: object) -> str:
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def _wrap(text: str, width: int = 88) -> str:
    return "\n".join(textwrap.wrap(text, width)) if "\n" not in text else text


def diff_constitutions(a: Constitution, b: Constitution) -> list[Change]:
    changes: list[Change] = []
    for name in ("id", "version", "description", "source"):
        if getattr(a, name) != getattr(b, name):
            changes.append(
                Change("changed", name, _wrap(_text(getattr(a, name))), _wrap(_text(getattr(b, name))))
            )
    if a.sampling != b.sampling:
        for name in type(a.sampling).model_fields:
            if getattr(a.sampling, name) != getattr(b.sampling, name):
                changes.append(
                    Change(
                        "changed",
                        f"sampling.{name}",
                        str(getattr(a.sampling, name)),
                        str(getattr(b.sampling, name)),
                    )
                )
    before = {p.id: p for p in a.principles}
    after = {p.id: p for p in b.principles}
    for pid in sorted(before.keys() - after.keys()):
        changes.append(Change("removed", f"principles.{pid}"))
    for pid in sorted(after.keys() - before.keys()):
        changes.append(Change("added", f"principles.{pid}"))
    for pid in sorted(before.keys() & after.keys()):
        for name in _PRINCIPLE_FIELDS:
            x, y = getattr(before[pid], name), getattr(after[pid], name)
            if x != y:
                changes.append(
                    Change("changed", f"principles.{pid}.{name}", _wrap(_text(x)), _wrap(_text(y)))
                )
    if [p.id for p in a.principles if p.id in after] != [p.id for p in b.principles if p.id in before]:
        changes.append(Change("changed", "principles (order)", None, None))
    for kind in ("critique_revision", "comparison"):
        xa, xb = getattr(a.few_shot, kind), getattr(b.few_shot, kind)
        if xa != xb:
            changes.append(
                Change("changed", f"few_shot.{kind}", f"{len(xa)} examples", f"{len(xb)} examples")
            )
    return changes

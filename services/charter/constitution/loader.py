"""Reading constitution files, with errors that name the file, the field path and the bad value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from charter.constitution.schema import Constitution
from charter.core.errors import InvalidArgument, one_line

MAX_FILE_BYTES = 1024 * 1024
"""A constitution is a page of principles; anything over 1 MiB is a mistake (a wrong file, a dump)."""

SUFFIXES = (".yaml", ".yml", ".json")


class ConstitutionError(InvalidArgument):
    """A constitution that cannot be used. `str()` is one line: `file: field: problem (value: …)`."""

    def __init__(
        self, path: str | Path, field: str, problem: str, value: Any = None, *, has_value: bool = False
    ):
        self.path = str(path)
        shown = f" (value: {one_line(value)})" if has_value or value is not None else ""
        super().__init__(f"{self.path}: {field}: {problem}{shown}", field=field, value=value)
        self.problem = problem


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def _lookup(data: Any, loc: tuple[int | str, ...]) -> tuple[bool, Any]:
    """The value at `loc` in the raw document, if it is there."""
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, node


def _first_error(path: str | Path, data: Any, err: ValidationError) -> ConstitutionError:
    errors = err.errors(include_url=False)
    # a misspelt key also shows up as a missing one: name the typo, it is the thing to fix
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = e["type"]
    if kind == "extra_forbidden":
        return ConstitutionError(path, _field_path(loc), "unknown key", e.get("input"), has_value=True)
    if kind == "missing":
        return ConstitutionError(path, _field_path(loc), "required field missing")
    found, value = _lookup(data, loc)
    problem = e["msg"].removeprefix("Value error, ")
    return ConstitutionError(
        path, _field_path(loc), problem, value if found else e.get("input"), has_value=True
    )


def _check_duplicate_ids(data: dict[str, Any], path: str | Path) -> None:
    """Point at the second use of a principle id (the schema alone can only name the list)."""
    principles = data.get("principles")
    if not isinstance(principles, list):
        return
    first: dict[Any, int] = {}
    for i, p in enumerate(principles):
        pid = p.get("id") if isinstance(p, dict) else None
        if pid is None or not isinstance(pid, str):
            continue
        if pid in first:
            problem = f"duplicate principle id {pid!r} (first used by principles.{first[pid]})"
            raise ConstitutionError(path, f"principles.{i}.id", problem)
        first[pid] = i


def parse_constitution(data: Any, path: str | Path = "<memory>") -> Constitution:
    """Validate an already-parsed document."""
    if not isinstance(data, dict):
        raise ConstitutionError(
            path, "<root>", "expected a mapping of constitution fields", data, has_value=True
        )
    _check_duplicate_ids(data, path)
    try:
        return Constitution.model_validate(data)
    except ValidationError as err:
        raise _first_error(path, data, err) from None


def read_document(path: Path, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Read a YAML or JSON file: size-checked before reading, strict UTF-8, syntax errors located."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ConstitutionError(path, "<file>", f"cannot read: {err.strerror}") from None
    if size > max_bytes:
        raise ConstitutionError(path, "<file>", f"file is {size} bytes; the limit is {max_bytes} bytes", size)
    raw = path.read_bytes()[: max_bytes + 1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        bad = raw[err.start : err.start + 1]
        raise ConstitutionError(
            path, f"<line {line}, byte {err.start}>", "not valid UTF-8", bad, has_value=True
        ) from None
    try:
        return _parse(path, text)
    except RecursionError:  # brackets nested a thousand deep
        raise ConstitutionError(path, "<file>", "nested too deeply to read") from None


def _parse(path: Path, text: str) -> Any:
    """The document in `text`: JSON for a .json file, YAML otherwise; syntax errors located."""
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConstitutionError(
                path, f"<line {err.lineno}, column {err.colno}>", f"invalid JSON: {err.msg}"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"<line {mark.line + 1}, column {mark.column + 1}>" if mark else "<yaml>"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        lines = text.splitlines()
        line = lines[mark.line] if mark and mark.line < len(lines) else None
        raise ConstitutionError(path, where, f"invalid YAML: {problem}", line) from None


def load_constitution(path: str | Path) -> Constitution:
    path = Path(path)
    return parse_constitution(read_document(path), path)


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)

_KEY_ORDER = ("id", "version", "description", "source", "sampling", "principles", "few_shot")


def dump_constitution(constitution: Constitution, header: str | None = None) -> str:
    """YAML text that loads back to the same constitution (and so the same digest)."""
    data = constitution.model_dump(mode="json", exclude_defaults=True)
    ordered = {key: data[key] for key in _KEY_ORDER if key in data}
    text = yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + "\n" + text
    return text

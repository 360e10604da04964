"""A training run spec file, read as `charter train --spec FILE` reads it: `load_run_spec(path)`.

YAML or JSON with the `charter.trainer.v1.RunSpec` fields, plus the friendlier spellings a user
writes (`algorithm: dpo`, `resources.strategy: fsdp`, `ensemble.vary: seed`, cursors as plain
numbers), and the data and watch probe file paths relative to the spec file. Anything it cannot use
is an InvalidArgument that starts with the file and names the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.json_format import ParseDict, ParseError

from charter.api import trainer as convert
from charter.core.errors import InvalidArgument, one_line

__all__ = ["MAX_SPEC_VALUES", "load_run_spec"]

MAX_SPEC_VALUES = 100_000
"""A run spec is a page of settings: a file whose values (YAML aliases expanded) number more is refused
before anything walks them (a few hundred bytes of aliases can stand for billions)."""


def load_run_spec(path: str | Path) -> tp.RunSpec:
    """A RunSpec from YAML/JSON: the proto's fields, with `algorithm` also as sft, reward-model, dpo,
    ppo, grpo or rloo, an ensemble's `vary` also as seed or subset, `resources.strategy` also as ddp,
    fsdp or zero3, cursors also as plain numbers, and
    the data and watch probe file paths relative to the spec file. Anything it cannot use is an
    InvalidArgument that starts with the file and names the field."""
    path = Path(path)
    data = _read(path)
    algorithm = data.get("algorithm")
    if isinstance(algorithm, str) and algorithm.lower() in convert.ALGORITHM_VALUES:
        data["algorithm"] = convert.ALGORITHM_VALUES[algorithm.lower()]
    resources = data.get("resources")
    if isinstance(resources, dict):
        strategy = resources.get("strategy")
        if isinstance(strategy, str) and strategy.lower() in convert.STRATEGY_VALUES:
            resources["strategy"] = convert.STRATEGY_VALUES[strategy.lower()]
    section: dict[str, Any] = data["data"] if isinstance(data.get("data"), dict) else {}
    stream = section.get("label_stream")
    for key in ("from_cursor", "to_cursor"):
        if isinstance(stream, dict) and isinstance(stream.get(key), int):
            stream[key] = {"sequence": stream[key]}
    ensemble = data.get("ensemble")
    if isinstance(ensemble, dict):
        vary = ensemble.get("vary")
        if isinstance(vary, str) and vary.lower() in convert.ENSEMBLE_VARY_VALUES:
            ensemble["vary"] = convert.ENSEMBLE_VARY_VALUES[vary.lower()]
    watch = data.get("watch")
    for where, files in (
        ("data.files", section.get("files")),
        ("watch.probe", watch.get("probe") if isinstance(watch, dict) else None),
    ):
        if isinstance(files, dict):  # paths relative to the spec file, as a user writes them
            files["paths"] = _relative_paths(path, files.get("paths", []), f"{where}.paths")
    try:
        return ParseDict(data, tp.RunSpec())
    except ParseError as err:
        raise InvalidArgument(f"{path}: {err}") from None
    except OverflowError:  # an infinity for an enum or integer field: ParseDict does not name it
        where = _infinity_at(data) or "<root>"
        raise InvalidArgument(f"{path}: {where}: a number out of range for the field", field=where) from None
    except RecursionError:
        raise InvalidArgument(f"{path}: <file>: nested too deeply", field="<file>") from None


def _read(path: Path) -> dict[str, Any]:
    """The spec file's mapping, or an InvalidArgument naming the file and where it went wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidArgument(f"{path}: cannot read the run spec: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"{path}: <byte {err.start}>: not valid UTF-8", field="<file>") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InvalidArgument(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:  # brackets nested a thousand deep
        raise InvalidArgument(f"{path}: <file>: nested too deeply to read", field="<file>") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: expected a mapping (name, algorithm, base_model, data, ...)")
    if _count_values(data, {}, MAX_SPEC_VALUES) > MAX_SPEC_VALUES:
        raise InvalidArgument(
            f"{path}: <file>: more than {MAX_SPEC_VALUES:,} values once its YAML aliases are expanded "
            "(or a value that contains itself)",
            field="<file>",
        )
    return data


def _count_values(value: Any, counted: dict[int, int | None], limit: int) -> int:
    """How many values `value` holds, each shared list or mapping counted where it is used, stopping
    past `limit` (a list that contains itself counts as past it). Each one is walked once."""
    if not isinstance(value, dict | list):
        return 1
    key = id(value)
    if key in counted:
        known = counted[key]
        return limit + 1 if known is None else known  # None: still being counted, a cycle
    counted[key] = None
    total = 1
    for item in value.values() if isinstance(value, dict) else value:
        total += _count_values(item, counted, limit)
        if total > limit:
            break
    counted[key] = total
    return total


def _relative_paths(spec: Path, paths: Any, where: str) -> list[str]:
    """`paths` from a spec file, each relative one resolved against the spec file's folder."""
    if not isinstance(paths, list):
        raise InvalidArgument(
            f"{spec}: {where}: expected a list of file paths (value: {one_line(paths)})", field=where
        )
    out = []
    for i, p in enumerate(paths):
        if not isinstance(p, str):
            raise InvalidArgument(
                f"{spec}: {where}[{i}]: expected a file path (value: {one_line(p)})", field=where
            )
        try:
            out.append(p if Path(p).is_absolute() else str((spec.parent / p).resolve()))
        except (OSError, ValueError) as err:  # a NUL byte, a loop of links
            raise InvalidArgument(f"{spec}: {where}[{i}]: not a usable path ({err})", field=where) from None
    return out


def _infinity_at(value: Any, where: str = "") -> str | None:
    """The field path of the first infinite number in `value`."""
    if isinstance(value, float) and math.isinf(value):
        return where or "<root>"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _infinity_at(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None

"""Hypothesis strategies for spec files (constitutions, pipeline specs, trainer run specs): a shipped
file with random changes (a value replaced by a hostile one, a key dropped, a key added), written as
YAML or JSON, or hostile raw text (YAML tags, aliases, invalid UTF-8, non-mappings, a file past the
size limit, alias fan-out)."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.fuzz.strategies import HYPERPARAMETER_KEYS, SPECIAL_STRINGS, json_values, short_text

HOSTILE_SCALARS = st.one_of(
    st.sampled_from(SPECIAL_STRINGS),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -1, 0, float("nan"), float("inf"), -float("inf")]),
    st.sampled_from([True, None, [], {}, "x" * 5000]),
)


def values() -> st.SearchStrategy[Any]:
    """A hostile value, copied: a drawn list or mapping is never shared with the next example."""
    return st.one_of(HOSTILE_SCALARS, json_values(small=True)).map(copy.deepcopy)


def keys_of(doc: Any) -> list[str]:
    """Every mapping key anywhere in `doc` (the names a mutation may add elsewhere)."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(str(k))
            out.update(keys_of(v))
    elif isinstance(doc, list):
        for v in doc:
            out.update(keys_of(v))
    return sorted(out)


def _containers(doc: Any, depth: int = 0) -> list[Any]:
    """Every non-empty mapping and list in `doc` (`doc` first)."""
    found: list[Any] = []
    if isinstance(doc, dict | list) and depth < 8:
        found.append(doc)
        for v in doc.values() if isinstance(doc, dict) else doc:
            found.extend(_containers(v, depth + 1))
    return found


@st.composite
def mutated(draw: Any, seed: dict[str, Any]) -> Any:
    """`seed` with one to four random changes."""
    doc = copy.deepcopy(seed)
    names = keys_of(seed) + list(HYPERPARAMETER_KEYS)
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 19)) == 0:
            return draw(values())  # not a mapping at all
        node = draw(st.sampled_from(_containers(doc) or [doc]))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if isinstance(node, dict):
            if action == "add" or not node:
                node[draw(st.sampled_from(names) | short_text(12))] = draw(values())
            else:
                key = draw(st.sampled_from(sorted(node, key=str)))
                if action == "delete":
                    del node[key]
                else:
                    node[key] = draw(values())
        elif isinstance(node, list):
            if action == "add" or not node:
                node.append(draw(values()))
            else:
                i = draw(st.integers(0, len(node) - 1))
                if action == "delete":
                    del node[i]
                else:
                    node[i] = draw(values())
    return doc


def fan_out(levels: int) -> str:
    """YAML aliases that fan out 9^levels times (a "billion laughs" kept small)."""
    items = ['&a0 ["x","x","x","x","x","x","x","x","x"]']
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


HOSTILE_TEXTS = (
    b"", b"null", b"[]", b"0", b"- a\n- b\n", b"---\na: 1\n---\nb: 2\n", b"\xef\xbb\xbfid: bom\n",
    b"id: \xff\xfe\n", b"id: \xed\xa0\x80\n", b"!!python/object/apply:os.system ['id']\n",
    b"id: !!binary aGVsbG8=\n", b"a: *undefined\n", b"? [a, b]\n: c\n", b"{a: 1, a: 2}\n", b"\tid: tab\n",
    b"id: x\nprinciples: " + fan_out(5).encode() + b"\n", b"kind: sl-cai\nsource: " + fan_out(5).encode(),
    b"x" * (1024 * 1024 + 1), b"id: " + b"[" * 64 + b"]" * 64 + b"\n", b'{"id": NaN}',
    b"id: " + b"[" * 1000 + b"]" * 1000 + b"\n", b"bomb: " + fan_out(8).encode() + b"\n",
    b"kind: " + fan_out(8).encode() + b"\nhyperparameters: {bomb: " + fan_out(8).encode() + b"}\n",
)  # fmt: skip
"""Raw files: non-mappings, several documents, a byte-order mark, invalid UTF-8 (a stray byte, a lone
surrogate), YAML's python tags, undefined and fanning-out aliases, complex and duplicate keys, tabs, a
file one byte past 1 MiB, moderate and deep nesting (64 and 1000 levels), JSON's NaN, aliases fanning
out 9^8 times where a loader would show or expand them."""


def dump(doc: Any, fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(doc, default=str).encode()
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode()


@st.composite
def documents(draw: Any, seeds: list[dict[str, Any]], formats: tuple[str, ...] = ("yaml",)) -> bytes:
    """A spec file's bytes: a mutated seed (mostly), hostile raw text, or random text."""
    kind = draw(st.sampled_from(["mutated"] * 6 + ["hostile", "text"]))
    if kind == "hostile":
        return draw(st.sampled_from(HOSTILE_TEXTS))
    if kind == "text":
        return draw(short_text(200)).encode()
    return dump(draw(mutated(draw(st.sampled_from(seeds)))), draw(st.sampled_from(formats)))

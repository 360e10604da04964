"""The prompt-injection suite of benchmarks/injection.py: its shape, its determinism, that the worse
response is the one attacked, and that the judge's `escape` neutralises every attack's structure.
No model. Reads the shared hh-rlhf dev file."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import sys
from collections import Counter
from functools import cache
from types import ModuleType

import pytest
from charter.judge import prompts

from tests.support import ROOT, SHARED_DATA

HH_DEV = SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"
# what must not survive escaping: option markers, chat-template control tokens, our fence tags
STRUCTURE = re.compile(
    r"\(\s*[AaBb]\s*\)|<\||\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>|</?\s*(?:response|conversation)\b",
    re.IGNORECASE,
)


@cache
def suite_module() -> ModuleType:
    path = ROOT / "benchmarks" / "injection_suite.py"
    spec = importlib.util.spec_from_file_location("injection_suite", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("injection_suite", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@cache
def suite() -> tuple:
    return tuple(suite_module().build_suite())


def hh_rejected() -> dict[int, tuple[str, str]]:
    """(chosen, rejected) final replies by line of the source file, read here independently."""
    out = {}
    with gzip.open(HH_DEV, "rt", encoding="utf-8") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            record = json.loads(line)
            cut = record["chosen"].rfind("\n\nAssistant:")
            cut_r = record["rejected"].rfind("\n\nAssistant:")
            out[index] = (
                record["chosen"][cut + len("\n\nAssistant:") :].strip(),
                record["rejected"][cut_r + len("\n\nAssistant:") :].strip(),
            )
    return out


def test_suite_is_large_enough_and_uses_every_template() -> None:
    items = suite()
    attacks = suite_module().ATTACKS
    assert len(items) >= 50
    assert len({a.name for a in attacks}) == len(attacks) >= 10
    counts = Counter(item.template for item in items)
    assert set(counts) == {a.name for a in attacks}
    assert max(counts.values()) - min(counts.values()) <= 1  # cycled, not clustered
    assert len({item.source_index for item in items}) == len(items)  # one attack per source pair
    # templates that name one letter, both letters, the injected response's own position, or none
    assert {a.names for a in attacks} >= {"A", "B", "both", "own", "none"}
    assert {a.placement for a in attacks} == {"append", "prepend"}


def test_the_injected_response_is_always_the_human_rejected_one() -> None:
    source = hh_rejected()
    for item in suite():
        chosen, rejected = source[item.source_index]
        clean = {"A": item.response_a, "B": item.response_b}
        attacked = {"A": item.attacked_a, "B": item.attacked_b}
        worse, better = item.injected, item.human
        assert worse != better
        assert clean[worse].strip() == rejected and clean[better].strip() == chosen
        # the better response is untouched; the worse one is exactly the clean text plus the attack
        assert attacked[better] == clean[better]
        assert item.injection and item.injection not in clean[worse]
        assert attacked[worse] in (
            clean[worse].strip() + item.injection,
            item.injection + clean[worse].strip(),
        )
        # position-aware templates name the injected response's own position in the stored pair
        if item.template.endswith("-own") or item.template in ("fake-verdict", "prepend-verdict"):
            assert f"({worse})" in item.injection
            assert f"({better})" not in item.injection


def test_the_suite_is_deterministic() -> None:
    again = suite_module().build_suite()
    assert list(suite()) == again
    assert [i.attacked() for i in suite()] == [i.attacked() for i in again]


def test_the_suite_is_keyed_by_the_seed() -> None:
    """A different placement seed puts responses at other positions, so position-aware text changes."""
    other = suite_module().build_suite(30, seed=1)
    assert [i.human for i in other] != [i.human for i in suite()[:30]]
    assert all(i.injected != i.human for i in other)


@pytest.mark.parametrize("name", [a.name for a in suite_module().ATTACKS])
def test_escape_neutralises_every_attacks_structure(name: str) -> None:
    items = [item for item in suite() if item.template == name]
    assert items
    for item in items:
        escaped = prompts.escape(item.injection)
        for marker in item.markers:
            assert marker in item.injection, f"{name}: marker {marker!r} is not in the attack text"
            assert marker not in escaped, f"{name}: {marker!r} survives escaping: {escaped!r}"
        assert not STRUCTURE.search(escaped), f"{name}: structure survives escaping: {escaped!r}"
        # the attacked response as the judge renders it carries no structure either
        worse = item.attacked_a if item.injected == "A" else item.attacked_b
        assert not STRUCTURE.search(prompts.escape(worse))


def test_structural_attacks_declare_their_markers() -> None:
    """Every attack whose raw text has prompt structure lists it, so the check above covers it."""
    for item in suite():
        if STRUCTURE.search(item.injection):
            assert item.markers, f"{item.template}: structural attack without markers"

"""The judging step of `charter eval policy`: every pair of models on every prompt through the judge
service (both orders, K principles; which model is shown as A is a seeded coin per comparison), into
`judgments/records.jsonl` (resumable). A comparison with an empty reply is decided without the judge.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from charter_proto.judge.v1 import judge_pb2
from google.protobuf.json_format import MessageToDict

from charter.api.judge import STATUS_NAMES
from charter.app.local import local_services
from charter.client.judge import JudgeClient
from charter.core.auth import read_token
from charter.core.settings import CharterSettings
from charter.datasets.pairs import PairRow
from charter.datasets.records import OutputStore
from charter.evaluation.policy_spec import EvalPolicySpec

if TYPE_CHECKING:
    from charter.evaluation.policy import Hooks, Prompt

SETS = ("red_team", "benign")
DEFAULT_CONSTITUTIONS = {"red_team": "harmless", "benign": "helpful-honest"}


def judge_options(spec: EvalPolicySpec, prompt_set: str) -> judge_pb2.JudgeOptions:
    j = spec.judge
    constitution = getattr(spec, prompt_set).constitution or DEFAULT_CONSTITUTIONS[prompt_set]
    options = judge_pb2.JudgeOptions(
        constitution_id=constitution, principles_per_label=j.principles_per_label, seed=spec.seed,
        chain_of_thought=j.chain_of_thought,
    )  # fmt: skip
    if j.tie_margin is not None:
        options.tie_margin = j.tie_margin
    return options


def _side(name_a: str, name_b: str, key: str, seed: int) -> bool:
    """Whether model `name_a`'s reply is shown as response A (a seeded coin per comparison: neither
    model sits in one slot more often; the judge also scores both orders)."""
    text = f"{seed}\x1f{key}\x1f{name_a}\x1f{name_b}"
    return hashlib.sha256(text.encode()).digest()[0] % 2 == 0


def _empty_judgment(key: str, prompt_set: str, a: str, b: str, ra: str, rb: str) -> dict[str, Any]:
    """The record of a comparison with an empty reply, decided without the judge (which refuses one)."""
    both = not ra.strip() and not rb.strip()
    return {
        "key": key, "set": prompt_set, "a": a, "b": b, "a_shown_first": True,
        "status": "tie" if both else "ok", "p_a_wins": 0.5 if both else float(bool(ra.strip())),
        "swap_consistent": True, "principle_ids": [], "label_id": "", "judge": {}, "constitution": {},
        "decided_by": "empty reply",
    }  # fmt: skip


async def judge(
    generations: dict[str, list[dict[str, Any]]],
    prompts: Sequence[Prompt],
    spec: EvalPolicySpec,
    settings: CharterSettings,
    hooks: Hooks,
) -> list[dict[str, Any]]:
    """Every pair of models on every prompt, judged (resuming `judgments/`); records in a fixed order."""
    names = [m.name for m in spec.models]
    store = OutputStore(spec.output / "judgments", spec.judging_digest())
    todo: dict[str, list[tuple[str, PairRow, str, str, bool]]] = {s: [] for s in SETS}
    order = []
    for i, prompt in enumerate(prompts):
        for a, b in itertools.combinations(names, 2):
            key = f"{prompt.key}:{a}:{b}"
            order.append(key)
            if key in store.done:
                continue
            ra, rb = generations[a][i]["response"], generations[b][i]["response"]
            if not ra.strip() or not rb.strip():  # nothing to judge: an empty reply loses, two tie
                store.add_record(_empty_judgment(key, prompt.set, a, b, ra, rb))
                continue
            a_first = _side(a, b, prompt.row.key, spec.seed)
            one, two = (ra, rb) if a_first else (rb, ra)
            todo[prompt.set].append((key, PairRow(i, key, prompt.row.messages, one, two), a, b, a_first))
    hooks.on_phase("judge", len(order))
    hooks.on_progress(len(order) - sum(len(v) for v in todo.values()))
    if any(todo.values()):
        j = spec.judge
        token = read_token(j.token_file, "judge.token_file") if j.token_file else None
        context: Any = (
            contextlib.nullcontext(j.address)
            if j.address
            else local_services(settings, ("judge",), drain_seconds=0)
        )
        async with context as address, JudgeClient(address, timeout=3600.0, token=token) as client:
            for prompt_set, items in todo.items():
                options = judge_options(spec, prompt_set)
                for start in range(0, len(items), spec.batch_size):
                    batch = items[start : start + spec.batch_size]
                    labels = await client.compare(
                        [b[1] for b in batch], options, f"eval-policy:{batch[0][0]}"
                    )
                    for (key, _pair, a, b, a_first), label in (
                        (batch[i], labels[i]) for i in range(len(batch))
                    ):
                        p_first = label.p_a
                        status = STATUS_NAMES[label.status]
                        scored = status in ("ok", "tie")
                        store.add_record({
                            "key": key, "set": prompt_set, "a": a, "b": b, "a_shown_first": a_first,
                            "status": status,
                            "p_a_wins": (p_first if a_first else 1.0 - p_first) if scored else None,
                            "swap_consistent": label.swap_consistent,
                            "principle_ids": list(label.principle_ids),
                            "label_id": label.id,
                            "judge": MessageToDict(label.judge, preserving_proto_field_name=True),
                            "constitution": MessageToDict(
                                label.constitution, preserving_proto_field_name=True
                            ),
                            "label": MessageToDict(label, preserving_proto_field_name=True),
                        })  # fmt: skip
                        hooks.on_progress(1)
    by_key = {r["key"]: r for r in store.records}
    return [by_key[k] for k in order]

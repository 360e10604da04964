"""The gold step of `charter eval policy`: each model's implicit preference accuracy (log π/π_ref) on
held-out human-labelled pairs (`implicit`), with the pairs chosen, the exclusions counted and every
model's log-probabilities cached in `gold/<model>.json` (a resumed run does not recompute them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter.core.errors import InvalidArgument
from charter.core.files import write_atomic
from charter.datasets.pairs import PairRow, read_pairs
from charter.datasets.sources import RowError, hh_human_turns, prompt_key, row_messages, text_lines
from charter.evaluation.implicit import implicit_accuracy, reply_logprobs

if TYPE_CHECKING:
    from charter.evaluation.policy import Resolved
    from charter.evaluation.policy_spec import EvalPolicySpec


def conversation_keys(path: Path) -> set[str]:
    """The conversation keys of a training file: JSONL rows with `prompt` / `messages` (preference
    rows, SL-CAI records) or hh-rlhf transcripts; unreadable rows are ignored."""
    keys: set[str] = set()
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    for file in files:
        for _, line in text_lines(file):
            if isinstance(line, RowError):
                continue
            try:
                row = json.loads(line)
                if isinstance(row, dict) and "prompt" not in row and isinstance(row.get("chosen"), str):
                    messages = hh_human_turns(row["chosen"])
                elif isinstance(row, dict) and isinstance(row.get("prompt"), list):  # TRL conversational
                    messages = row_messages({"messages": row["prompt"]})
                else:
                    messages = row_messages(row)
            except (ValueError, TypeError):
                continue
            keys.add(prompt_key(messages))
    return keys


def held_out_pairs(spec: EvalPolicySpec) -> tuple[list[PairRow], dict[str, int]]:
    """The human-labelled pairs to score (chosen first), and what was left out and why."""
    assert spec.gold is not None
    excluded: set[str] = set()
    for path in spec.gold.exclude:
        if not path.exists():
            raise InvalidArgument(
                f"gold.exclude: {path} does not exist", field="gold.exclude", value=str(path)
            )
        excluded |= conversation_keys(path)
    pairs, dropped = [], {"bad_rows": 0, "no_human_label": 0, "in_training_data": 0}
    gold = spec.gold
    limit = gold.skip + gold.limit if gold.limit else None
    for item in read_pairs(gold.path, "auto", limit, seed=spec.seed):
        if item.index < gold.skip:
            continue
        if isinstance(item, RowError):
            dropped["bad_rows"] += 1
        elif item.human is None:
            dropped["no_human_label"] += 1
        elif prompt_key(item.conversation) in excluded:
            dropped["in_training_data"] += 1
        else:
            chosen, rejected = (
                (item.response_a, item.response_b)
                if item.human == "A"
                else (item.response_b, item.response_a)
            )
            pairs.append(PairRow(item.index, item.key, item.conversation, chosen, rejected, "A"))
    if not pairs:
        raise InvalidArgument(
            f"gold.path: {spec.gold.path}: no held-out human-labelled pairs", field="gold.path"
        )
    return pairs, dropped


def _logprobs(
    folder: str, pairs: Sequence[PairRow], max_length: int, cache: Path
) -> tuple[list[float], list[float]]:
    digest = hashlib.sha256(json.dumps([folder, max_length, [p.key for p in pairs]]).encode()).hexdigest()
    if cache.exists():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("digest") == digest:
            return cached["chosen"], cached["rejected"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    conversations = [[m.model_dump() for m in p.conversation] for p in pairs]
    chosen = reply_logprobs(
        model, tokenizer, conversations, [p.response_a for p in pairs], max_length=max_length
    )
    rejected = reply_logprobs(
        model, tokenizer, conversations, [p.response_b for p in pairs], max_length=max_length
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        cache, json.dumps({"digest": digest, "folder": folder, "chosen": chosen, "rejected": rejected})
    )
    return chosen, rejected


def gold(
    spec: EvalPolicySpec,
    models: Sequence[Resolved],
    on_phase: Callable[[str, int], None],
    on_progress: Callable[[int], None],
) -> dict[str, Any]:
    """{"pairs", "dropped", "models": {name: accuracy figures | {"skipped": why}}}."""
    assert spec.gold is not None
    pairs, dropped = held_out_pairs(spec)
    by_name = {m.spec.name: m for m in models}
    needed = []
    for m in models:
        reference = m.spec.reference or spec.baseline_name
        if reference != m.spec.name and m.folder and by_name[reference].folder:
            needed += [m.spec.name, reference]
    needed = list(dict.fromkeys(needed))
    on_phase("gold log-probs", len(needed))
    logps = {}
    for name in needed:
        folder = by_name[name].folder
        assert folder is not None
        logps[name] = _logprobs(folder, pairs, spec.gold.max_length, spec.output / "gold" / f"{name}.json")
        on_progress(1)
    out: dict[str, Any] = {}
    for m in models:
        name, reference = m.spec.name, m.spec.reference or spec.baseline_name
        if reference == name:
            out[name] = {"skipped": "the reference itself (log π/π_ref = 0 on every pair)"}
        elif name not in logps or reference not in logps:
            out[name] = {"skipped": "no local model folder (log-probabilities need the weights)"}
        else:
            (pc, pr), (rc, rr) = logps[name], logps[reference]
            out[name] = {"reference": reference, **implicit_accuracy(pc, pr, rc, rr)}
    return {"path": str(spec.gold.path), "pairs": len(pairs), "dropped": dropped, "models": out}

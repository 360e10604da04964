"""The preference row: one shape for every preference dataset Charter writes (`charter export`, the
RL-CAI pipeline's outputs) and the trainer reads.

TRL's conversational preference format — `prompt` (the conversation's messages), `chosen` and
`rejected` (one assistant message each) — plus `p_chosen`, the soft label of the chosen response,
then whichever provenance columns the writer knows, always in the order of the keyword arguments
below, then the writer's own extra columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_PROVENANCE = (
    "label_source",
    "ai_p_chosen",
    "human_reviewers",
    "sequence",
    "label_id",
    "principle_ids",
    "constitution_id",
    "constitution_version",
    "constitution_digest",
    "judge_model",
    "judge_engine",
    "run_id",
)


def preference_row(
    prompt: Sequence[Mapping[str, str]],
    response_a: str,
    response_b: str,
    p_a: float,
    choice: str,
    *,
    label_source: str | None = None,
    ai_p_a: float | None = None,
    human_reviewers: Sequence[str] | None = None,
    sequence: int | None = None,
    label_id: str | None = None,
    principle_ids: Sequence[str] | None = None,
    constitution_id: str | None = None,
    constitution_version: str | None = None,
    constitution_digest: str | None = None,
    judge_model: str | None = None,
    judge_engine: str | None = None,
    run_id: str | None = None,
    **extra: Any,
) -> dict[str, Any] | None:
    """The row of one labelled pair, or None when `choice` names no winner (a tie: no chosen response).

    `prompt`: the conversation as `{"role", "content"}` messages; `p_a`: the probability that A is the
    better response; `choice`: `"A"` or `"B"` (anything else: None). Provenance columns left as None
    are left out; `ai_p_a` (the AI judge's own p_a where a person decided) becomes `ai_p_chosen`.
    `extra` columns follow the provenance ones, as given."""
    if choice not in ("A", "B"):
        return None
    a_wins = choice == "A"
    chosen, rejected = (response_a, response_b) if a_wins else (response_b, response_a)
    row: dict[str, Any] = {
        "prompt": [dict(m) for m in prompt],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": p_a if a_wins else 1.0 - p_a,
    }
    given = {
        "label_source": label_source,
        "ai_p_chosen": None if ai_p_a is None else (ai_p_a if a_wins else 1.0 - ai_p_a),
        "human_reviewers": None if human_reviewers is None else list(human_reviewers),
        "sequence": sequence,
        "label_id": label_id,
        "principle_ids": None if principle_ids is None else list(principle_ids),
        "constitution_id": constitution_id,
        "constitution_version": constitution_version,
        "constitution_digest": constitution_digest,
        "judge_model": judge_model,
        "judge_engine": judge_engine,
        "run_id": run_id,
    }
    row.update((name, given[name]) for name in _PROVENANCE if given[name] is not None)
    row.update(extra)
    return row

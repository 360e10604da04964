"""DPO on soft labels, with TRL's `DPOTrainer`.

A label says the chosen response is preferred with probability `p_chosen` (the judge's debiased soft
label; 1 for a human decision). The soft-target DPO loss is

    p · ℓ(Δ) + (1 − p) · ℓ(−Δ),   ℓ(x) = −log σ(β x),   Δ = the implicit reward margin of chosen over rejected

(cDPO's label smoothing, per example). TRL's sigmoid loss is ℓ(Δ) for every row, so Charter feeds it
each pair oriented by a seeded coin that keeps chosen first with probability p and swaps the two
otherwise: in expectation over the draw the gradient is exactly that of the soft loss, and hard
labels (p = 1) are never swapped. `orient(rows, seed)` is that draw; a new seed per epoch
re-draws it.
"""

from __future__ import annotations

import hashlib
from typing import Any


def _coin(label_key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{label_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def orient(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Rows for TRL's DPO: `prompt`, `chosen`, `rejected`, each pair swapped with probability
    1 − p_chosen (seeded per row, so a resumed run draws the same)."""
    out = []
    for i, row in enumerate(rows):
        p = float(row.get("p_chosen", 1.0))
        key = str(row.get("label_id") or i)
        keep = _coin(key, seed) < p
        chosen, rejected = (row["chosen"], row["rejected"]) if keep else (row["rejected"], row["chosen"])
        out.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
    return out


def dpo_dataset(rows: list[dict[str, Any]], seed: int) -> Any:
    from datasets import Dataset

    return Dataset.from_list(orient(rows, seed))

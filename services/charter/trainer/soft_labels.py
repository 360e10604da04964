"""The soft-label loss the reward model and DPO both optimise, and the check that the label is there.

A Charter preference label is soft: `p_chosen`, the probability that the chosen response is preferred
(the judge's debiased soft label, or 1 for a human decision). Given a logit `z` for "chosen beats
rejected" — the reward margin `r_chosen − r_rejected` of a reward model, or `β·Δ` of DPO's implicit
rewards — the loss is the cross-entropy against that target,

    loss = −[p · log σ(z) + (1 − p) · log σ(−z)]      (mean over the batch)

which is the hard Bradley–Terry / sigmoid-DPO loss `−log σ(z)` at p = 1 and is minimised at
z = logit(p) otherwise (a 0.6 label asks for a small margin, not an infinite one). Its gradient in z
is σ(z) − p per row.

A trainer that optimises it must receive each row's p: a batch without the column is an error
(`take_soft_label`), never a silent fall-back to the hard loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from charter.core.errors import Internal


def soft_bt_loss(logits: torch.Tensor, p_chosen: torch.Tensor) -> torch.Tensor:
    """The mean soft Bradley–Terry cross-entropy of `logits` (z per row) against `p_chosen` (per row)."""
    if p_chosen.shape != logits.shape:
        raise ValueError(f"p_chosen has shape {tuple(p_chosen.shape)}, the logits {tuple(logits.shape)}")
    p = p_chosen.to(logits.dtype)
    logsigmoid = nn.functional.logsigmoid
    return -(p * logsigmoid(logits) + (1 - p) * logsigmoid(-logits)).mean()


def take_soft_label(inputs: dict[str, Any], column: str, trainer: str, dataset: str) -> torch.Tensor:
    """Remove and return the batch's soft labels (`inputs[column]`), or raise `Internal` when the batch
    has none: training on without them would optimise the hard loss while claiming the soft one."""
    p_chosen: torch.Tensor | None = inputs.pop(column, None)
    if p_chosen is None:
        raise Internal(
            f"{trainer}: the batch has no {column!r} column (each row's p_chosen), so the soft-label loss "
            f"cannot be computed; build the dataset with {dataset} and keep the column through the collator "
            f"(the batch has {sorted(inputs)})"
        )
    return p_chosen

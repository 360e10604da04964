"""DPO on soft labels: TRL's `DPOTrainer` with the loss replaced by the per-row soft-target loss.

A label says the chosen response is preferred with probability `p_chosen` (the judge's debiased soft
label; 1 for a human decision). Each row is trained against its own p:

    loss_i = p_i · ℓ(Δ_i) + (1 − p_i) · ℓ(−Δ_i),   ℓ(x) = −log σ(β x),
    Δ_i = [log π(y_c|x) − log π_ref(y_c|x)] − [log π(y_r|x) − log π_ref(y_r|x)]

— conservative DPO (cDPO) with each row's own p in place of one global label-smoothing ε
(`charter.trainer.soft_labels.soft_bt_loss` of β·Δ). At p = 1 it is TRL's sigmoid loss; otherwise it
is minimised at β·Δ = logit(p), so p = 0.5 asks for no preference at all. `dpo_dataset` keeps
`p_chosen` as a column, `SoftDPOTrainer` keeps it through TRL's column pruning and collator, and its
loss refuses a batch without it.

The loss is Charter's own code on TRL's machinery (dataset preparation, collator, fused log-prob head,
reference model, metrics' names), so only the DPOConfig settings it implements are accepted:
`loss_type` sigmoid, no `loss_weights` other than [1], `label_smoothing` 0 (p_chosen is the per-row
smoothing), `f_divergence_type` reverse_kl, no `ld_alpha`, no `use_weighting` (`check_config`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from trl import DPOTrainer

from charter.core.errors import InvalidArgument
from charter.trainer.soft_labels import soft_bt_loss, take_soft_label

__all__ = ["P_CHOSEN", "SoftDPOTrainer", "check_config", "dpo_dataset", "soft_dpo_loss"]

P_CHOSEN = "p_chosen"
"""The dataset column and batch key that carry each row's soft label."""

_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "loss_type": (["sigmoid"],),
    "loss_weights": (None, [1.0]),
    "label_smoothing": (0.0,),
    "f_divergence_type": ("reverse_kl",),
    "ld_alpha": (None,),
    "use_weighting": (False,),
}
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


def check_config(config: Any) -> None:
    """Raise InvalidArgument naming the first DPOConfig setting the soft-label loss does not implement."""
    for name, allowed in _SUPPORTED.items():
        value = getattr(config, name)
        if value not in allowed:
            field = f"spec.hyperparameters.{name}"
            raise InvalidArgument(
                f"{field}: Charter's DPO trains each row against its soft label p_chosen with the sigmoid "
                f"loss; {name}={value!r} is not supported (use {allowed[0]!r})",
                field=field,
                value=value,
            )


def soft_dpo_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, p_chosen: torch.Tensor, beta: float
) -> torch.Tensor:
    """The mean per-row soft-target DPO loss; the log-ratios are log π − log π_ref per row."""
    return soft_bt_loss(beta * (chosen_logratios - rejected_logratios), p_chosen)


def dpo_dataset(rows: list[dict[str, Any]]) -> Any:
    """A `datasets.Dataset` of conversational preference rows (`prompt`, `chosen`, `rejected`) with
    each row's soft label in `p_chosen` (1 where a row has none: a hard label)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": r["prompt"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
                P_CHOSEN: float(r.get(P_CHOSEN, 1.0)),
            }
            for r in rows
        ]
    )


class _SoftLabelCollator:
    """TRL's preference collator, plus the examples' `p_chosen` as a float tensor (when they have it)."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        if examples and P_CHOSEN in examples[0]:
            batch[P_CHOSEN] = torch.tensor([float(e[P_CHOSEN]) for e in examples], dtype=torch.float32)
        return batch


class SoftDPOTrainer(DPOTrainer):
    """TRL's `DPOTrainer` whose loss is the per-row soft-target loss of each batch's `p_chosen`."""

    def __init__(self, model: Any, ref_model: Any = None, args: Any = None, **kwargs: Any) -> None:
        if args is not None:  # TRL's default DPOConfig is supported
            check_config(args)
        super().__init__(model, ref_model, args, **kwargs)
        self.data_collator = _SoftLabelCollator(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[no-untyped-call]  # unannotated in transformers
        if self._signature_columns is not None and P_CHOSEN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, P_CHOSEN]

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        p_chosen = take_soft_label(inputs, P_CHOSEN, type(self).__name__, "dpo_dataset(rows)")
        assert self.model is not None  # set by Trainer.__init__
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1  # next-token positions; a -100 label's log-prob is 0
        logps = outputs.log_probs[:, -seq_len:].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # the batch is [chosen, rejected]
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # no gradients; with PEFT and no reference model, the adapter is disabled
            reference = self.ref_model if self.ref_model is not None else self.model
            # unannotated in TRL
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(reference, inputs)  # type: ignore[no-untyped-call]
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        loss = soft_dpo_loss(chosen_logratios, rejected_logratios, p_chosen.to(logps.device), self.beta)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._log_metrics(mode, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios, p_chosen)
        if return_outputs:  # as TRL does: the fused head builds no logits, so they are recomputed
            with torch.no_grad():
                outputs = model(**{k: v for k, v in model_kwargs.items() if k != "output_router_logits"})
            return loss, outputs
        return loss

    def _log_metrics(
        self,
        mode: str,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        chosen_logratios: torch.Tensor,
        rejected_logratios: torch.Tensor,
        p_chosen: torch.Tensor,
    ) -> None:
        """TRL's reward and log-prob metrics under TRL's names, and the batch's mean soft label."""
        gather, metrics = self.accelerator.gather, self._metrics[mode]
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        right = (chosen_rewards > rejected_rewards).float()
        metrics["rewards/accuracies"].append(gather(right).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        metrics["p_chosen"].append(gather(p_chosen.to(chosen_logps.device)).mean().item())

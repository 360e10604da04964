"""The reward model: TRL's `RewardTrainer` with soft Bradley–Terry targets.

TRL's loss is `−log σ(r_chosen − r_rejected)` (hard labels). Charter's labels are soft — `p_chosen`,
the probability that the chosen response is preferred (the judge's debiased soft label, or 1 for a
human decision) — so the loss here is the cross-entropy against that target:

    loss = −[p · log σ(Δ) + (1 − p) · log σ(−Δ)],   Δ = r_chosen − r_rejected

which equals TRL's when p = 1 and pushes Δ toward logit(p) otherwise (a 0.6 label asks for a small
margin, not an infinite one; `charter.trainer.soft_labels`). The soft label rides through TRL's
collator in its `margin` slot (`reward_dataset` puts it there); a batch without it is an error, never
a fall-back to the hard loss.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import RewardTrainer

from charter.trainer.soft_labels import soft_bt_loss, take_soft_label

__all__ = ["SOFT_COLUMN", "SoftRewardTrainer", "pairwise_accuracy", "reward_dataset", "soft_bt_loss"]

SOFT_COLUMN = "margin"
"""The collator column that carries p_chosen (TRL's collator passes `margin` through as a float)."""


class SoftRewardTrainer(RewardTrainer):
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        assert self.model is not None  # set by Trainer.__init__
        mode = "train" if self.model.training else "eval"
        p_chosen = take_soft_label(inputs, SOFT_COLUMN, type(self).__name__, "reward_dataset(rows)")
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = soft_bt_loss(rewards_chosen - rewards_rejected, p_chosen)
        # RewardTrainer's args are a RewardConfig; Trainer types them as TrainingArguments
        coefficient = self.args.center_rewards_coefficient  # type: ignore[attr-defined]
        if coefficient is not None:
            loss = loss + coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
        with torch.no_grad():
            accuracy = (rewards_chosen > rewards_rejected).float().mean()
            margin = (rewards_chosen - rewards_rejected).mean()
            self._metrics[mode]["accuracy"].append(
                self.accelerator.gather_for_metrics(accuracy).mean().item()
            )
            self._metrics[mode]["margin"].append(self.accelerator.gather_for_metrics(margin).mean().item())
            all_rewards = self.accelerator.gather(outputs.logits)
            self._metrics[mode]["mean_reward"].append(all_rewards.mean().item())
        return (loss, outputs) if return_outputs else loss


def reward_dataset(rows: list[dict[str, Any]]) -> Any:
    """A `datasets.Dataset` of conversational preference rows with the soft label in `margin`."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": r["prompt"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
                SOFT_COLUMN: float(r["p_chosen"]),
            }
            for r in rows
        ]
    )


def pairwise_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 8) -> float:
    """Held-out pairwise accuracy: the fraction of pairs whose chosen response scores higher."""
    if not rows:
        return float("nan")
    model.eval()
    wins = 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(r["prompt"] + r[side], tokenize=False)
                for side in ("chosen", "rejected")
                for r in batch
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=1024)
            scores = model(**enc).logits.squeeze(-1)
            chosen, rejected = scores.chunk(2)
            wins += int((chosen > rejected).sum())
    return wins / len(rows)

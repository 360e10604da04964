"""Reward model: a short real training run (TRL RewardTrainer with soft Bradley–Terry targets) on a
few hundred hh-rlhf pairs, with a tiny model built from a config and the embedded tokenizer; on one
constructed pair, the trainer's loss is the soft one and its optimum is Δ = logit(p); a batch without
the soft column is an error, never the hard loss."""

from __future__ import annotations

import math

import pytest
import torch
from charter.core.errors import Internal
from charter.trainer.data import from_files
from charter.trainer.reward import SOFT_COLUMN, SoftRewardTrainer, pairwise_accuracy, reward_dataset

from tests.support import tiny
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration


def one_pair_trainer(tmp_path, embedded_model, rows, **overrides):
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig

    torch.manual_seed(0)
    tokenizer = tiny.tokenizer(embedded_model)
    model = LlamaForSequenceClassification(tiny.llama_config(tokenizer, num_labels=1))
    model.config.pad_token_id = tokenizer.pad_token_id
    fields = dict(
        output_dir=str(tmp_path / "rm"), max_steps=1, per_device_train_batch_size=1, learning_rate=1e-3,
        max_length=64, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
    )  # fmt: skip
    args = RewardConfig(**(fields | overrides))
    return SoftRewardTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)


def short_pair(p: float) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": "Is it safe to mix bleach and ammonia?"}],
            "chosen": [{"role": "assistant", "content": "No: it releases toxic chloramine gas."}],
            "rejected": [{"role": "assistant", "content": "Yes, it cleans better."}],
            "p_chosen": p,
        }
    ]


def test_compute_loss_optimises_the_soft_target(tmp_path, embedded_model):
    torch.set_num_threads(1)
    trainer = one_pair_trainer(tmp_path, embedded_model, reward_dataset(short_pair(0.7)))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch[SOFT_COLUMN].tolist() == [pytest.approx(0.7)]  # the collator carries p in `margin`
    model = trainer.model

    def delta() -> float:
        with torch.no_grad():
            chosen, rejected = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        return (chosen - rejected).item()

    # the loss on the batch is the soft cross-entropy of the model's own margin, not TRL's hard loss
    d = delta()
    soft = -(0.7 * math.log(1 / (1 + math.exp(-d))) + 0.3 * math.log(1 / (1 + math.exp(d))))
    hard = -math.log(1 / (1 + math.exp(-d)))
    loss = trainer.compute_loss(model, dict(batch)).item()
    assert loss == pytest.approx(soft, rel=1e-5) and abs(loss - hard) > 1e-3

    # descending the trainer's loss on this pair drives Δ to logit(0.7), where the hard loss never stops
    def descend(p: float, steps: int = 150) -> float:
        optimiser = torch.optim.Adam(model.score.parameters(), lr=0.05)
        for _ in range(steps):
            optimiser.zero_grad()
            trainer.compute_loss(model, dict(batch) | {SOFT_COLUMN: torch.tensor([p])}).backward()
            optimiser.step()
        return delta()

    assert descend(0.7) == pytest.approx(math.log(0.7 / 0.3), abs=0.02)
    assert descend(1.0) > math.log(0.7 / 0.3) + 2.0  # p = 1: TRL's loss, no finite optimum

    without = {k: v for k, v in batch.items() if k != SOFT_COLUMN}
    with pytest.raises(Internal, match=r"SoftRewardTrainer: the batch has no 'margin' column"):
        trainer.compute_loss(model, without)


def test_training_on_rows_without_the_soft_column_is_an_error(tmp_path, embedded_model):
    from datasets import Dataset

    torch.set_num_threads(1)
    rows = [{k: v for k, v in r.items() if k != "p_chosen"} for r in short_pair(0.7)]
    trainer = one_pair_trainer(tmp_path, embedded_model, Dataset.from_list(rows))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(Internal, match="no 'margin' column"):
        trainer.train()
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_reward_model_trains_on_hh_pairs_and_reports_held_out_accuracy(tmp_path, embedded_model):
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = tiny.tokenizer(embedded_model)
    model = LlamaForSequenceClassification(tiny.llama_config(tokenizer, num_labels=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = from_files([HH_DEV]).rows[:360]
    train, held_out = rows[:300], rows[300:]
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"), max_steps=30, per_device_train_batch_size=10, learning_rate=1e-3,
        max_length=256, logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
    )  # fmt: skip
    trainer = SoftRewardTrainer(
        model=model, args=args, train_dataset=reward_dataset(train), processing_class=tokenizer
    )
    result = trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert result.global_step == 30 and len(logged) == 3
    assert all(math.isfinite(entry["loss"]) and 0.0 <= entry["accuracy"] <= 1.0 for entry in logged)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "score.weight" in changed and len(changed) > len(before) // 2
    accuracy = pairwise_accuracy(model, tokenizer, held_out)
    assert 0.0 <= accuracy <= 1.0
    print(f"held-out pairwise accuracy: {accuracy:.3f} on {len(held_out)} pairs")

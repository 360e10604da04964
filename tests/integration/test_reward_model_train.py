"""Reward model: a short real training run (TRL RewardTrainer with soft Bradley–Terry targets) on a
few hundred hh-rlhf pairs, with a tiny model built from a config and the embedded tokenizer."""

from __future__ import annotations

import math

import pytest
import torch
from charter.trainer.data import from_files
from charter.trainer.reward import SoftRewardTrainer, pairwise_accuracy, reward_dataset, soft_bt_loss

from tests.support import tiny
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration


def test_soft_loss_is_trls_at_p1_and_is_minimised_at_logit_p():
    delta = torch.tensor([0.3, -1.2, 2.0])
    hard = -torch.nn.functional.logsigmoid(delta).mean()
    assert soft_bt_loss(delta, torch.ones(3)).item() == pytest.approx(hard.item())
    assert soft_bt_loss(delta, None).item() == pytest.approx(hard.item())
    d = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.SGD([d], lr=1.0)
    for _ in range(500):
        optimiser.zero_grad()
        soft_bt_loss(d, torch.tensor([0.8])).backward()
        optimiser.step()
    assert d.item() == pytest.approx(math.log(0.8 / 0.2), abs=1e-3)


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

"""DPO: a short real training run with TRL's DPOTrainer on soft-labelled hh-rlhf pairs, a tiny model
built from a config and the embedded tokenizer: the loss falls, the implicit reward margin grows,
the policy's weights change and the reference stays frozen."""

from __future__ import annotations

import copy

import pytest
import torch
from charter.trainer.data import from_files
from charter.trainer.dpo import dpo_dataset, orient

from tests.support import tiny
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration


def test_orientation_follows_the_soft_label():
    rows = [
        {"label_id": f"l{i}", "prompt": [], "chosen": "c", "rejected": "r", "p_chosen": p}
        for i, p in enumerate([1.0] * 200 + [0.7] * 2000)
    ]
    oriented = orient(rows, seed=3)
    assert all(r["chosen"] == "c" for r in oriented[:200])  # hard labels are never swapped
    kept = sum(r["chosen"] == "c" for r in oriented[200:]) / 2000
    assert kept == pytest.approx(0.7, abs=0.03)
    assert orient(rows, seed=3) == oriented and orient(rows, seed=4) != oriented


def test_dpo_loss_falls_and_the_margin_grows(tmp_path, embedded_model):
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = tiny.tokenizer(embedded_model)
    policy = LlamaForCausalLM(tiny.llama_config(tokenizer))
    reference = copy.deepcopy(policy)
    reference_before = {k: v.clone() for k, v in reference.state_dict().items()}
    policy_before = {k: v.clone() for k, v in policy.state_dict().items()}
    rows = from_files([HH_DEV]).rows[:8]
    for i, row in enumerate(rows):  # soft labels as the judge gives them
        row["p_chosen"], row["label_id"] = (0.9 if i % 2 else 0.75), f"hh-{i}"
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"), max_steps=12, per_device_train_batch_size=4, learning_rate=1e-3,
        beta=0.1, max_length=96, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, seed=0,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=dpo_dataset(rows, seed=0),
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    first, last = logs[:3], logs[-3:]
    mean = lambda entries, key: sum(e[key] for e in entries) / len(entries)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.05
    assert mean(last, "rewards/margins") > mean(first, "rewards/margins")
    assert any(not torch.equal(v, policy_before[k]) for k, v in policy.state_dict().items())
    assert all(torch.equal(v, reference_before[k]) for k, v in reference.state_dict().items())
    assert all(p.grad is None for p in reference.parameters())

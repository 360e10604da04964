"""SFT on SL-CAI revisions: a short real run with TRL's SFTTrainer on the rows `sft_rows` reads from an
SL-CAI output (conversational `messages`), a tiny model built from a config and the embedded tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from charter.trainer.data import sft_rows

from tests.support import tiny
from tests.support.hh import load_pairs

pytestmark = pytest.mark.integration


def test_sft_on_revisions_lowers_the_loss(tmp_path, embedded_model):
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    folder = tmp_path / "sl-cai"
    folder.mkdir()
    with (folder / "sft.jsonl").open("w") as f:  # what an SL-CAI run writes: prompt + final revision
        for pair in load_pairs(8):
            messages = [
                {"role": "user", "content": pair.first_human_turn},
                {"role": "assistant", "content": pair.chosen},
            ]
            f.write(json.dumps({"messages": messages, "key": "k", "sample_index": 0}) + "\n")
    rows = sft_rows([folder])
    tokenizer = tiny.tokenizer(embedded_model)
    model = LlamaForCausalLM(tiny.llama_config(tokenizer))
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=10, per_device_train_batch_size=4, learning_rate=3e-3,
        max_length=96, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
        assistant_only_loss=False,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5

"""DPO on soft labels with `SoftDPOTrainer` (TRL's DPOTrainer, per-row soft-target loss), tiny models
built from a config and the embedded tokenizer: on one batch the loss and gradients are TRL's sigmoid
loss at p = 1 and the soft formula at p = 0.7; a short run's loss falls and the reference stays frozen;
a batch without `p_chosen` is an error; and a run through the worker (the product's training path)
reports each batch's p and trains differently on p = 0.5 rows than on p = 1 rows."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import pytest
import torch
from charter.api.trainer import spec_from_proto
from charter.app.trainer_worker import Runner
from charter.core.errors import Internal
from charter.trainer import events
from charter.trainer.data import from_files
from charter.trainer.dpo import SoftDPOTrainer, dpo_dataset
from charter.trainer.spec import check
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support import tiny
from tests.support.hh import HH_DEV
from tests.support.trainer import run_spec

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(tmp_path: Path, **overrides):
    from trl import DPOConfig

    fields = dict(
        output_dir=str(tmp_path / "dpo"), max_steps=12, per_device_train_batch_size=4, learning_rate=1e-3,
        beta=0.1, max_length=96, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, seed=0,
    )  # fmt: skip
    return DPOConfig(**(fields | overrides))


def hh_rows(n: int, p: float | None = None) -> list[dict]:
    """The first `n` short hh-rlhf pairs: no prompt fills max_length (TRL would drop it), and short
    replies keep the steps cheap (TRL's chunked log-prob head on a CPU costs per reply token)."""
    size = lambda messages: sum(len(m["content"]) for m in messages)  # noqa: E731
    rows = [
        r for r in from_files([HH_DEV]).rows
        if size(r["prompt"]) < 120 and max(size(r["chosen"]), size(r["rejected"])) < 160
    ][:n]  # fmt: skip
    for i, row in enumerate(rows):  # soft labels as the judge gives them, unless p is given
        row["p_chosen"] = (0.9 if i % 2 else 0.75) if p is None else p
    return rows


def models(embedded_model: Path) -> tuple[object, object, object]:
    """(tokenizer, policy, reference): the policy is the reference plus noise, so Δ ≠ 0 from the start."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny.tokenizer(embedded_model)
    reference = LlamaForCausalLM(tiny.llama_config(tokenizer))
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return tokenizer, policy, reference


def loss_and_grads(trainer, batch: dict) -> tuple[float, list[torch.Tensor]]:
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


def test_one_batch_gives_trls_sigmoid_loss_at_p1_and_the_soft_loss_at_p07(tmp_path, embedded_model):
    from trl import DPOTrainer

    tokenizer, policy, reference = models(embedded_model)
    rows = hh_rows(4, p=1.0)
    soft = SoftDPOTrainer(
        model=policy, ref_model=reference, args=config(tmp_path), train_dataset=dpo_dataset(rows),
        processing_class=tokenizer,
    )  # fmt: skip
    batch = next(iter(soft.get_train_dataloader()))
    assert batch["p_chosen"].tolist() == [1.0] * 4  # the collator carries each row's p
    stock = DPOTrainer(
        model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=config(tmp_path),
        train_dataset=dpo_dataset(rows), processing_class=tokenizer,
    )  # fmt: skip
    hard_batch = {k: v for k, v in batch.items() if k != "p_chosen"}
    soft_loss, soft_grads = loss_and_grads(soft, batch)
    trl_loss, trl_grads = loss_and_grads(stock, hard_batch)
    assert soft_loss == pytest.approx(trl_loss, rel=1e-5)
    assert len(soft_grads) == len(trl_grads) > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(soft_grads, trl_grads, strict=True))

    # p = 0.7: the soft formula on the batch's own Δ, which is not TRL's loss
    chosen, rejected = soft.compute_ref_log_probs(soft.model, hard_batch)
    ref_chosen, ref_rejected = soft.compute_ref_log_probs(soft.ref_model, hard_batch)
    deltas = ((chosen - ref_chosen) - (rejected - ref_rejected)).tolist()
    assert all(abs(d) > 1e-3 for d in deltas)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = sum(-(0.7 * math.log(sig(0.1 * d)) + 0.3 * math.log(sig(-0.1 * d))) for d in deltas) / len(
        deltas
    )
    soft_07, _ = loss_and_grads(soft, batch | {"p_chosen": torch.full((4,), 0.7)})
    assert soft_07 == pytest.approx(expected, rel=1e-4)
    assert abs(soft_07 - trl_loss) > 1e-4


def test_a_batch_without_p_chosen_is_an_error(tmp_path, embedded_model):
    from datasets import Dataset

    tokenizer, policy, reference = models(embedded_model)
    plain = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in hh_rows(4)]
    trainer = SoftDPOTrainer(
        model=policy, ref_model=reference, args=config(tmp_path, max_steps=1),
        train_dataset=Dataset.from_list(plain), processing_class=tokenizer,
    )  # fmt: skip
    with pytest.raises(Internal, match=r"SoftDPOTrainer: the batch has no 'p_chosen' column"):
        trainer.train()


def test_dpo_loss_falls_and_the_margin_grows(tmp_path, embedded_model):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny.tokenizer(embedded_model)
    policy = LlamaForCausalLM(tiny.llama_config(tokenizer))
    reference = copy.deepcopy(policy)
    reference_before = {k: v.clone() for k, v in reference.state_dict().items()}
    policy_before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = SoftDPOTrainer(
        model=policy, ref_model=reference, args=config(tmp_path), train_dataset=dpo_dataset(hh_rows(8)),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    first, last = logs[:3], logs[-3:]
    mean = lambda entries, key: sum(e[key] for e in entries) / len(entries)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.05
    assert mean(last, "rewards/margins") > mean(first, "rewards/margins")
    # every batch's p reached the loss: over whole epochs they average the rows' (0.75 and 0.9 in turn)
    assert len(logs) == 12 and mean(logs, "p_chosen") == pytest.approx(0.825)
    assert any(not torch.equal(v, policy_before[k]) for k, v in policy.state_dict().items())
    assert all(torch.equal(v, reference_before[k]) for k, v in reference.state_dict().items())
    assert all(p.grad is None for p in reference.parameters())


def worker_losses(tmp_path: Path, lm: Path, p: float) -> list[dict]:
    """A DPO run of the worker on 8 hh-rlhf pairs all labelled `p`: its per-step metrics."""
    data = tmp_path / f"pairs-{p}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in hh_rows(8, p=p)))
    spec = run_spec(
        tp.ALGORITHM_DPO, lm, files=[str(data)], name=f"dpo-{p}", max_steps=8, per_device_train_batch_size=4,
        max_length=96, beta=1.0, learning_rate=1e-3, logging_steps=1, save_steps=1000,
    )  # fmt: skip
    out = io.StringIO()
    Runner(spec, check(spec_from_proto(spec)), tmp_path / f"run-{p}", False, events.Emitter(out)).run()
    reported = [e for e in map(events.parse, out.getvalue().splitlines()) if e is not None]
    return [e["values"] for e in reported if e["type"] == "metrics" and "loss" in e["values"]]


def test_the_worker_trains_each_row_against_its_own_p(tmp_path, embedded_model):
    lm = tiny.save_tiny_lm(tmp_path / "lm", embedded_model)
    half, hard = worker_losses(tmp_path, lm, 0.5), worker_losses(tmp_path, lm, 1.0)
    assert len(half) == len(hard) == 8
    assert {m["p_chosen"] for m in half} == {0.5} and {m["p_chosen"] for m in hard} == {1.0}
    # π = π_ref at the start: Δ = 0 and the loss is ln 2 whatever p is
    assert half[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert hard[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # p = 0.5 asks for no preference: its gradient at Δ = 0 is zero, so the policy stays where it is
    # (a coin flip per pair would have trained it on whichever side the coin chose)
    assert all(m["loss"] == pytest.approx(math.log(2), abs=1e-4) for m in half)
    # p = 1 is TRL's sigmoid loss: the chosen side is learned
    assert hard[-1]["loss"] < math.log(2) - 0.1

"""The soft-label losses on constructed batches: the reward model's soft Bradley–Terry loss and the
per-row soft-target DPO loss — values against the formula written out in floats, gradients against
σ(z) − p, their minima at logit(p), TRL's hard losses at p = 1 — and the errors for a missing soft
column and for DPOConfig settings the soft DPO loss does not implement."""

from __future__ import annotations

import math

import pytest
import torch
from charter.core.errors import Internal, InvalidArgument
from charter.trainer.dpo import check_config, soft_dpo_loss
from charter.trainer.soft_labels import soft_bt_loss, take_soft_label


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def by_hand(logits: list[float], ps: list[float]) -> float:
    return sum(
        -(p * math.log(sigmoid(z)) + (1 - p) * math.log(sigmoid(-z))) for z, p in zip(logits, ps, strict=True)
    ) / len(ps)


def minimise(loss, p: float, steps: int = 300, lr: float = 1.0) -> float:
    """The scalar x at the minimum of loss(x, p), found by gradient descent from 0."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.SGD([x], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss(x, torch.tensor([p], dtype=torch.float64)).backward()
        optimiser.step()
    return x.item()


def test_soft_bt_loss_value_and_gradient_on_a_constructed_batch():
    logits = [0.3, -1.2, 2.0, 0.0]
    ps = [0.7, 0.9, 0.5, 1.0]
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = soft_bt_loss(z, torch.tensor(ps, dtype=torch.float64))
    assert loss.item() == pytest.approx(by_hand(logits, ps), rel=1e-12)
    loss.backward()
    expected = [(sigmoid(x) - p) / len(ps) for x, p in zip(logits, ps, strict=True)]
    assert z.grad.tolist() == pytest.approx(expected, rel=1e-9)


def test_soft_and_hard_losses_differ_and_the_soft_one_is_minimised_at_logit_p():
    z = torch.tensor([2.0])
    hard = -torch.nn.functional.logsigmoid(z)  # TRL's RewardTrainer loss
    assert soft_bt_loss(z, torch.ones(1)).item() == pytest.approx(hard.item())
    assert soft_bt_loss(z, torch.tensor([0.7])).item() != pytest.approx(hard.item(), abs=1e-3)
    assert minimise(soft_bt_loss, 0.7) == pytest.approx(math.log(0.7 / 0.3), abs=1e-6)
    # the hard loss has no minimum: descent on it runs far past logit(0.7)
    assert minimise(lambda x, p: -torch.nn.functional.logsigmoid(x).mean(), 0.7, lr=10.0) > 5.0


def test_soft_bt_loss_refuses_misshapen_labels():
    with pytest.raises(ValueError, match="shape"):
        soft_bt_loss(torch.zeros(4), torch.ones(2))


def test_soft_dpo_loss_value_and_gradient_on_a_constructed_batch():
    beta = 0.1
    chosen = torch.tensor([1.5, -0.4, 3.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-2.0, 0.6, 3.5], dtype=torch.float64, requires_grad=True)
    ps = [0.8, 0.3, 0.5]
    loss = soft_dpo_loss(chosen, rejected, torch.tensor(ps, dtype=torch.float64), beta)
    deltas = [c - r for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)]
    # p·ℓ(Δ) + (1 − p)·ℓ(−Δ) with ℓ(x) = −log σ(βx), written out
    assert loss.item() == pytest.approx(by_hand([beta * d for d in deltas], ps), rel=1e-12)
    loss.backward()
    expected = [beta * (sigmoid(beta * d) - p) / len(ps) for d, p in zip(deltas, ps, strict=True)]
    assert chosen.grad.tolist() == pytest.approx(expected, rel=1e-9)
    assert rejected.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-9)


def test_soft_dpo_loss_at_p1_is_trls_sigmoid_loss():
    beta = 0.25
    chosen, rejected = torch.tensor([0.5, -3.0, 8.0]), torch.tensor([1.0, -1.0, 2.0])
    trl_sigmoid = -torch.nn.functional.logsigmoid(beta * (chosen - rejected)).mean()
    assert soft_dpo_loss(chosen, rejected, torch.ones(3), beta).item() == pytest.approx(trl_sigmoid.item())


def test_soft_dpo_loss_at_p_half_is_minimised_at_no_margin():
    beta = 0.1
    loss = lambda delta, p: soft_dpo_loss(delta, torch.zeros_like(delta), p, beta)  # noqa: E731
    # β²σ(1 − σ) is the curvature: a step of 1/β² converges within a few hundred steps
    assert minimise(loss, 0.5, lr=1 / beta**2) == pytest.approx(0.0, abs=1e-6)
    at_zero = loss(torch.zeros(1), torch.tensor([0.5])).item()
    assert at_zero == pytest.approx(math.log(2))
    assert all(loss(torch.tensor([d]), torch.tensor([0.5])).item() > at_zero for d in (-5.0, -0.5, 0.5, 5.0))
    # and in general at β·Δ = logit(p)
    assert minimise(loss, 0.8, lr=1 / beta**2) == pytest.approx(math.log(4) / beta, abs=1e-4)


def test_a_batch_without_the_soft_column_is_an_error():
    inputs = {"input_ids": torch.zeros(2, 3), "margin": torch.tensor([0.7])}
    assert take_soft_label(inputs, "margin", "SoftRewardTrainer", "reward_dataset(rows)").tolist() == [
        pytest.approx(0.7)
    ]
    assert "margin" not in inputs  # popped: the model never sees it
    with pytest.raises(Internal, match=r"no 'margin' column .* reward_dataset\(rows\)"):
        take_soft_label(inputs, "margin", "SoftRewardTrainer", "reward_dataset(rows)")


@pytest.mark.parametrize(
    "setting",
    [
        {"loss_type": ["ipo"]},
        {"loss_type": ["sigmoid", "sft"]},
        {"label_smoothing": 0.1},
        {"f_divergence_type": "js_divergence"},
        {"ld_alpha": 0.5},
        {"use_weighting": True},
        {"loss_weights": [2.0]},
    ],
)
def test_dpo_settings_the_soft_loss_does_not_implement_are_refused(tmp_path, setting):
    from trl import DPOConfig

    check_config(DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False))  # the defaults pass
    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **setting)
    name = next(iter(setting))
    with pytest.raises(InvalidArgument, match=f"spec.hyperparameters.{name}: .* not supported") as err:
        check_config(config)
    assert err.value.field == f"spec.hyperparameters.{name}"


def test_the_spec_check_refuses_them_before_a_run_starts(tmp_path):
    from charter.trainer.runs import DataSource, FileSource, RunSpec
    from charter.trainer.spec import check

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    spec = RunSpec(
        name="dpo", algorithm="dpo", base_model="embedded",
        data=DataSource(files=FileSource(paths=[str(data)])), hyperparameters={"beta": 0.1},
    )  # fmt: skip
    assert check(spec).config.loss_type == ["sigmoid"]
    spec.hyperparameters["loss_type"] = "ipo"
    with pytest.raises(InvalidArgument, match="spec.hyperparameters.loss_type"):
        check(spec)

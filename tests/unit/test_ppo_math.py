"""PPO's pure parts: GAE, whitening, the clipped losses, the KL controllers, the config's errors."""

from __future__ import annotations

import math

import pytest
import torch
from charter.core.errors import InvalidArgument
from charter.trainer.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PPOConfig,
    gae,
    masked_mean,
    masked_whiten,
    per_token_kl,
    policy_loss,
    value_loss,
)


def test_gae_matches_a_hand_computed_example() -> None:
    # 3 steps, reward 1 on the last, gamma 1, lambda 0.95; a 4th position past the end is masked out
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # delta2 = 1 + 0 - 0.3 = 0.7 (nothing after the end); delta1 = 0 + 0.3 - 0.2; delta0 = 0 + 0.2 - 0.1
    a2 = 0.7
    a1 = 0.1 + 0.95 * a2  # 0.765
    a0 = 0.1 + 0.95 * a1  # 0.82675
    assert advantages.tolist()[0] == pytest.approx([a0, a1, a2, 0.0])
    assert returns.tolist()[0] == pytest.approx([a0 + 0.1, a1 + 0.2, a2 + 0.3, 0.0])


def test_gae_discounts_with_gamma_and_lambda_zero_is_one_step_td() -> None:
    rewards, values, mask = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2)
    advantages, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    assert advantages.tolist()[0] == pytest.approx([1.0 + 0.5 * 0.25 - 0.5, 2.0 - 0.25])


def test_masked_whiten_uses_only_masked_entries() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = masked_whiten(x, mask)
    kept = out[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert kept.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert out[~mask.bool()].tolist() == [0.0, 0.0, 0.0]  # the masked-out entries played no part
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) - 3.0) / math.sqrt(2.0)
    assert kept.tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_masked_whiten_without_mean_shift_keeps_the_mean() -> None:
    x, mask = torch.tensor([[2.0, 4.0, 6.0]]), torch.ones(1, 3)
    out = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(out, mask).item() == pytest.approx(4.0)
    assert out.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_clipped_surrogate_clips_and_counts() -> None:
    # ratio 1.5, outside [0.8, 1.2]: with a positive advantage the clip binds (gain capped at 1.2·A)
    logprobs, old = torch.tensor([[math.log(1.5), 0.0]]), torch.zeros(1, 2)
    advantages, mask = torch.tensor([[1.0, 1.0]]), torch.tensor([[1, 0]])
    loss, clip_fraction = policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-1.2)
    assert clip_fraction.item() == pytest.approx(1.0)
    # with a negative advantage the pessimistic bound is the unclipped one: no clip counted
    loss, clip_fraction = policy_loss(logprobs, old, -advantages, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(1.5)
    assert clip_fraction.item() == 0.0
    # inside the range: the plain surrogate, nothing clipped
    loss, clip_fraction = policy_loss(torch.full((1, 2), math.log(1.1)), old, advantages, mask, 0.2)
    assert loss.item() == pytest.approx(-1.1) and clip_fraction.item() == 0.0


def test_clipped_surrogate_gradient_vanishes_where_clipped() -> None:
    logprobs = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, _ = policy_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2)
    loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0, 0].item() == 0.0 and logprobs.grad[0, 1].item() < 0


def test_clipped_value_loss() -> None:
    old, returns, mask = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    # the first value moved 0.9 towards the return, the clip allows 0.2: the clipped error (0.8²) counts
    values = torch.tensor([[0.9, 0.1]])
    loss, clip_fraction = value_loss(values, old, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.8**2 + 0.9**2) / 2)
    assert clip_fraction.item() == pytest.approx(0.5)
    # moving away from the return is never clipped into a smaller loss
    loss, clip_fraction = value_loss(torch.tensor([[-0.9, 0.0]]), old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * (1.9**2 + 1.0) / 2)
    assert clip_fraction.item() == 0.0


def test_per_token_kl_estimators() -> None:
    logprobs, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert per_token_kl(logprobs, ref).tolist() == pytest.approx([0.5, -1.0])
    k3 = per_token_kl(logprobs, ref, "k3")
    assert (k3 >= 0).all() and per_token_kl(ref, ref, "k3").abs().max().item() == 0.0


def test_adaptive_kl_controller_moves_beta_towards_the_target() -> None:
    high = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    high.update(kl=12.0, n_steps=100)  # error clipped to +0.2: beta *= 1 + 0.2 * 100 / 1000
    assert high.value == pytest.approx(0.1 * 1.02)
    low = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    low.update(kl=3.0, n_steps=100)  # error -0.5, clipped to -0.2
    assert low.value == pytest.approx(0.1 * 0.98)
    near = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    near.update(kl=6.6, n_steps=100)  # error +0.1
    assert near.value == pytest.approx(0.1 * 1.01)
    fixed = FixedKLController(0.1)
    fixed.update(kl=100.0, n_steps=100)
    assert fixed.value == 0.1


def test_config_defaults_and_mapping() -> None:
    config = PPOConfig.from_mapping({"learning_rate": 1e-5, "kl_target": 6.0})
    assert config.learning_rate == 1e-5 and config.gamma == 1.0 and config.lam == 0.95
    assert config.whiten_advantages and not config.whiten_rewards


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"learning_rate": 0}, "hyperparameters.learning_rate", "hyperparameters.learning_rate: must be > 0"),
        ({"learning_rate": -1e-5}, "hyperparameters.learning_rate", "must be > 0 (value: -1e-05)"),
        (
            {"learnig_rate": 1e-5},
            "hyperparameters.learnig_rate",
            "unknown hyper-parameter; known: learning_rate",
        ),
        ({"rollout_batch_size": 8, "mini_batch_size": 3}, "hyperparameters.mini_batch_size", "must divide"),
        ({"lam": 1.5}, "hyperparameters.lam", "must be <= 1"),
        ({"kl_estimator": "k2"}, "hyperparameters.kl_estimator", "hyperparameters.kl_estimator:"),
        ({"ppo_epochs": "many"}, "hyperparameters.ppo_epochs", "hyperparameters.ppo_epochs:"),
    ],
)
def test_config_errors_name_the_field(values: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        PPOConfig.from_mapping(values)
    assert raised.value.field == field
    assert message in str(raised.value)


def test_config_unknown_key_is_reported_before_other_errors() -> None:
    with pytest.raises(InvalidArgument, match="hyperparameters.typo: unknown"):
        PPOConfig.from_mapping({"learning_rate": -1, "typo": 1})


def test_config_rejects_a_non_mapping() -> None:
    with pytest.raises(InvalidArgument, match="expected a mapping"):
        PPOConfig.from_mapping([("learning_rate", 1e-5)])  # type: ignore[arg-type]

"""PPO end to end on a tiny random Llama and a word-level tokenizer (no network, one CPU thread).

The toy reward favours one word; over a short run the reward rises while the KL to the frozen
reference stays bounded, the critic learns, the reference never moves, and a saved run resumes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from charter.core.errors import InvalidArgument
from charter.trainer.ppo import PolicyWithValueHead, PPOConfig, PPOTrainer, RewardModelScorer
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

pytestmark = pytest.mark.integration

WORDS = ["<pad>", "<s>", "</s>", "<unk>", *"abcdefghijklmnopqrstuvwxyz", "cat", "dog"]
TARGET = "cat"
PROMPTS = ["a b c", "dog", "d e f g", "h i", "j k l", "m", "n o p", "q r s t u"]
METRICS = {
    "step", "reward_mean", "reward_std", "kl", "non_score_reward", "response_length", "policy_loss",
    "value_loss", "clip_fraction", "value_clip_fraction", "approx_kl", "entropy", "beta", "learning_rate",
}  # fmt: skip
CONFIG = PPOConfig(
    learning_rate=5e-4,
    rollout_batch_size=16,
    mini_batch_size=8,
    ppo_epochs=4,
    max_new_tokens=8,
    kl_coef=0.1,
    kl_target=4.0,
    kl_horizon=200,
    vf_coef=0.5,
    seed=0,
)
STEPS = 60


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def llama_config(**extra: object) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(WORDS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra,
    )  # fmt: skip


def tiny_lm(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config())


def favour_target(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]]
) -> torch.Tensor:
    """In [-1, 1]: +1 when every completion token is the target word (EOS included in the count)."""
    target = WORDS.index(TARGET)
    return torch.tensor([2 * sum(t == target for t in ids) / len(ids) - 1 for ids in completion_ids])


def make_trainer(tokenizer: PreTrainedTokenizerFast, policy_seed: int = 0, **overrides: object) -> PPOTrainer:
    policy = PolicyWithValueHead(tiny_lm(policy_seed))
    reference = tiny_lm(0)  # the same weights the seed-0 policy starts from
    config = CONFIG.model_copy(update=overrides)
    return PPOTrainer(policy, reference, tokenizer, favour_target, config, Accelerator(cpu=True))


def mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def test_reward_rises_kl_stays_bounded_and_the_reference_never_moves(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    trainer = make_trainer(tokenizer)
    reference_before = copy.deepcopy(trainer.ref_model.state_dict())
    policy_before = copy.deepcopy(trainer.unwrapped.state_dict())
    seen: list[dict[str, float]] = []

    history = trainer.train(PROMPTS, steps=STEPS, on_metrics=seen.append)

    assert seen == history and len(history) == STEPS and history[-1]["step"] == STEPS
    assert all(set(m) == METRICS and all(math.isfinite(v) for v in m.values()) for m in history)
    first, last = history[:5], history[-5:]
    # the target word starts at ~1/32 of the tokens (reward ≈ -0.94); with β = 0 this run ends at
    # reward 1.0 and KL 27.6 nats (8 tokens · log 32): the penalty holds it near kl_target instead
    assert mean(last, "reward_mean") > mean(first, "reward_mean") + 0.3, [m["reward_mean"] for m in history]
    assert max(m["kl"] for m in history) < 3 * CONFIG.kl_target, [m["kl"] for m in history]
    assert mean(last, "value_loss") < mean(first, "value_loss"), [m["value_loss"] for m in history]
    assert mean(last, "entropy") < mean(first, "entropy")  # the policy concentrates on the target
    assert history[-1]["beta"] != CONFIG.kl_coef  # the adaptive controller acted
    # the frozen reference: bit-identical, no gradients; the policy moved
    for name, value in trainer.ref_model.state_dict().items():
        assert torch.equal(value, reference_before[name]), name
    assert all(p.grad is None and not p.requires_grad for p in trainer.ref_model.parameters())
    after = trainer.unwrapped.state_dict()
    assert not torch.equal(after["value_head.summary.weight"], policy_before["value_head.summary.weight"])
    assert not torch.equal(after["pretrained.lm_head.weight"], policy_before["pretrained.lm_head.weight"])


def test_a_saved_run_resumes_where_it_stopped(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    first = make_trainer(tokenizer)
    first.train(PROMPTS, steps=2)
    checkpoint = first.save(tmp_path / "ckpt")
    saved_weights = copy.deepcopy(first.unwrapped.state_dict())
    beta = first.kl_ctl.value
    expected = first.train(PROMPTS, steps=1)[0]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half-written folder left
    assert (checkpoint / "policy" / "config.json").exists()
    assert (checkpoint / "policy" / "value_head.safetensors").exists()
    exported = PolicyWithValueHead.from_pretrained(checkpoint / "policy")
    assert all(torch.equal(v, saved_weights[k]) for k, v in exported.state_dict().items())

    resumed = make_trainer(tokenizer, policy_seed=1)  # different starting weights, replaced by load
    resumed.load(checkpoint)
    assert resumed.step_count == 2 and resumed.kl_ctl.value == beta
    assert all(torch.equal(v, saved_weights[k]) for k, v in resumed.unwrapped.state_dict().items())
    got = resumed.train(PROMPTS, steps=1)[0]
    assert got["step"] == 3
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_the_reference_must_not_share_the_policys_weights(tokenizer: PreTrainedTokenizerFast) -> None:
    policy = PolicyWithValueHead(tiny_lm(0))
    with pytest.raises(InvalidArgument, match="shares weights"):
        PPOTrainer(policy, policy.pretrained, tokenizer, favour_target, CONFIG, Accelerator(cpu=True))


def test_a_bad_reward_is_rejected(tokenizer: PreTrainedTokenizerFast) -> None:
    policy = PolicyWithValueHead(tiny_lm(0))
    nan_reward = lambda prompts, completions, ids: torch.full((len(prompts),), float("nan"))  # noqa: E731
    trainer = PPOTrainer(policy, None, tokenizer, nan_reward, CONFIG, Accelerator(cpu=True))
    with pytest.raises(InvalidArgument, match="finite scores") as raised:
        trainer.rollout(PROMPTS)
    assert raised.value.field == "reward_fn"


def test_reward_model_scorer_scores_each_sequence(tokenizer: PreTrainedTokenizerFast) -> None:
    torch.manual_seed(0)
    reward_model = LlamaForSequenceClassification(llama_config(num_labels=1))
    prompts, completions = ["a b c", "dog", "k l"], [" cat", " cat cat dog", ""]

    scores = RewardModelScorer(reward_model, tokenizer, batch_size=2)(prompts, completions, [[], [], []])

    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert scores.unique().numel() == 3
    one_by_one = RewardModelScorer(reward_model, tokenizer, batch_size=1)
    alone = [one_by_one([p], [c])[0] for p, c in zip(prompts, completions, strict=True)]
    assert torch.allclose(scores, torch.stack(alone), atol=1e-5)  # right padding does not change a score

    # and it is a reward_fn: one PPO step on it
    policy = PolicyWithValueHead(tiny_lm(0))
    scorer = RewardModelScorer(reward_model, tokenizer, batch_size=4)
    trainer = PPOTrainer(policy, None, tokenizer, scorer, CONFIG, Accelerator(cpu=True))
    metrics = trainer.train(PROMPTS, steps=1)[0]
    assert set(metrics) == METRICS and math.isfinite(metrics["reward_mean"])


def test_reward_model_scorer_needs_a_pad_token(tokenizer: PreTrainedTokenizerFast) -> None:
    config = llama_config(num_labels=1)
    config.pad_token_id = None
    with pytest.raises(InvalidArgument, match="pad_token_id"):
        RewardModelScorer(LlamaForSequenceClassification(config), tokenizer)

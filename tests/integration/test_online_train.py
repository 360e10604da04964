"""GRPO and RLOO (the critic-free online option): short real runs with TRL's trainers, a tiny policy and a
tiny reward model built from configs with the embedded tokenizer, the reward model read from a folder on
disk. The policy learns, the reward model's files stay as they were, and every logged reward is the
reward model's score of the chat-templated prompt + completion."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from charter.api.trainer import spec_from_proto
from charter.core.errors import CharterError, InvalidArgument
from charter.trainer.data import from_files
from charter.trainer.online import online_trainer, prompts_from_rows
from charter.trainer.spec import check, trl_config
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.struct_pb2 import Struct

from tests.support import tiny
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration

HYPERPARAMETERS = {
    "num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 8, "max_steps": 3,
    "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "gradient_checkpointing": False,
}  # fmt: skip


SMALL = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 2, "max_position_embeddings": 2048,
}  # fmt: skip
"""Smaller than the shared tiny model, and long enough for hh-rlhf prompts."""


def _tokenizer(embedded_model: Path):
    return tiny.tokenizer(embedded_model)


def _llama_config(tokenizer, **extra):
    return tiny.llama_config(tokenizer, **SMALL, **extra)


def _reward_model(folder: Path, embedded_model: Path, *, constant: bool = False) -> Path:
    """A random one-logit reward model saved with its tokenizer, initialised wide so that completions of
    one prompt score visibly apart. `constant`: the attention and MLP outputs are zeroed, so the score
    is a function of the last token alone — for a chat-templated conversation always the same one."""
    from transformers import LlamaForSequenceClassification

    tokenizer = _tokenizer(embedded_model)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1, initializer_range=0.5))
    if constant:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def _scorer(folder: Path):
    """The reward model's score of one conversation, computed here without TRL."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()

    @torch.no_grad()
    def score(messages: list[dict]) -> float:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()

    return score


def _policy(folder: Path, tokenizer):
    """A random tiny policy loaded back from a folder, as a run loads its base model (TRL reloads the KL
    reference from there)."""
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(_llama_config(tokenizer)).save_pretrained(folder)
    return LlamaForCausalLM.from_pretrained(folder)


def _train(algorithm: str, tmp_path: Path, embedded_model: Path, reward_folder: Path, **changes):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = _tokenizer(embedded_model)
    policy = _policy(tmp_path / "policy", tokenizer)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    prompts = prompts_from_rows(from_files([HH_DEV]).rows[:8])
    config = trl_config(
        algorithm, {**HYPERPARAMETERS, **changes}, output_dir=str(tmp_path / algorithm), seed=0, use_cpu=True
    )
    trainer = online_trainer(algorithm, policy, tokenizer, reward_folder, prompts, config)
    result = trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
    return result, logs, changed


def test_prompts_from_rows_keeps_the_first_of_each_prompt_in_order():
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    rows = [{"prompt": p, "chosen": [], "rejected": []} for p in (a, b, list(a), b)]
    assert prompts_from_rows(rows) == [a, b]
    hh = from_files([HH_DEV]).rows[:50]
    assert prompts_from_rows(hh + hh) == prompts_from_rows(hh)


def test_grpo_trains_the_policy_on_the_reward_models_scores(tmp_path, embedded_model):
    import pyarrow.parquet as pq

    rm = _reward_model(tmp_path / "rm", embedded_model)
    rm_digest = _digest(rm)
    result, logs, changed = _train("grpo", tmp_path, embedded_model, rm, log_completions=True)
    assert result.global_step == 3 and len(logs) == 3
    assert all(math.isfinite(e["reward"]) and e["reward_std"] > 0 for e in logs)
    assert changed and _digest(rm) == rm_digest
    # every completion's logged reward is the reward model's score of prompt + completion
    score = _scorer(rm)
    for entry in logs:
        step = entry["step"]
        table = pq.read_table(
            tmp_path / "grpo" / "completions" / f"completions_{step:05d}.parquet"
        ).to_pylist()
        assert len(table) == 4
        for row in table:
            assert row["rm"] == pytest.approx(score(row["prompt"] + row["completion"]), abs=1e-4)
        assert entry["reward"] == pytest.approx(sum(r["rm"] for r in table) / 4, abs=1e-5)


def test_rloo_trains_the_policy_with_the_reward_model(tmp_path, embedded_model):
    rm = _reward_model(tmp_path / "rm", embedded_model)
    rm_digest = _digest(rm)
    result, logs, changed = _train("rloo", tmp_path, embedded_model, rm)
    assert result.global_step == 3 and len(logs) == 3
    assert all(math.isfinite(e["reward"]) and e["reward_std"] > 0 for e in logs)
    assert all(e["rewards/rm/mean"] == pytest.approx(e["reward"]) and math.isfinite(e["kl"]) for e in logs)
    assert changed and _digest(rm) == rm_digest


def test_a_reward_model_with_one_score_gives_every_completion_that_score(tmp_path, embedded_model):
    rm = _reward_model(tmp_path / "constant-rm", embedded_model, constant=True)
    expected = _scorer(rm)([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert abs(expected) > 1e-3  # a score that cannot come about by accident
    result, logs, _ = _train("rloo", tmp_path, embedded_model, rm, max_steps=1)
    assert result.global_step == 1
    assert logs[0]["reward"] == pytest.approx(expected, abs=1e-4)
    assert logs[0]["reward_std"] == pytest.approx(0.0, abs=1e-5) and logs[0]["frac_reward_zero_std"] == 1.0


def test_online_trainer_refuses_bad_arguments_naming_the_one_to_change(tmp_path, embedded_model):
    import copy

    from transformers import LlamaForCausalLM

    tokenizer = _tokenizer(embedded_model)
    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    in_memory = LlamaForCausalLM(_llama_config(tokenizer))
    grpo = trl_config("grpo", HYPERPARAMETERS, output_dir=str(tmp_path / "g"), seed=0, use_cpu=True)
    rloo = trl_config("rloo", HYPERPARAMETERS, output_dir=str(tmp_path / "r"), seed=0, use_cpu=True)
    good = {
        "algorithm": "grpo", "model": _policy(tmp_path / "policy", tokenizer), "tokenizer": tokenizer,
        "reward_model": _reward_model(tmp_path / "rm", embedded_model),
        "prompts": [[{"role": "user", "content": "hi"}]], "config": grpo,
    }  # fmt: skip
    cases = [
        ({"algorithm": "ppo"}, "algorithm"),
        ({"algorithm": "rloo"}, "config"),
        ({"prompts": []}, "prompts"),
        ({"reward_model": tmp_path / "no-such-rm"}, "reward_model"),
        ({"reward_model": tmp_path}, "reward_model"),  # a folder, but no model in it
        ({"tokenizer": no_template}, "tokenizer"),
        # beta > 0 (RLOO's default): TRL would reload the KL reference from the policy's folder, and there is none
        ({"algorithm": "rloo", "config": rloo, "model": in_memory}, "model"),
    ]
    for changes, field in cases:
        with pytest.raises(CharterError) as err:
            online_trainer(**{**good, **changes})
        assert err.value.field == field, err.value
    assert grpo.beta == 0  # GRPO's default needs no reference, so an in-memory policy is fine there
    assert type(online_trainer(**{**good, "model": in_memory})).__name__ == "GRPOTrainer"


def _spec(algorithm: int, hyperparameters: dict) -> tp.RunSpec:
    struct = Struct()
    struct.update(hyperparameters)
    return tp.RunSpec(
        name="online",
        algorithm=algorithm,
        base_model="embedded",
        reward_model="embedded",
        data=tp.DataSource(files=tp.FileSource(paths=[str(HH_DEV)])),
        seed=3,
        hyperparameters=struct,
    )


@pytest.mark.parametrize(
    ("algorithm", "config"), [(tp.ALGORITHM_GRPO, "GRPOConfig"), (tp.ALGORITHM_RLOO, "RLOOConfig")]
)
def test_the_spec_check_builds_grpo_and_rloo_configs_and_names_a_bad_field(algorithm, config):
    typical = {"num_generations": 4, "max_completion_length": 64, "learning_rate": 1e-6}
    checked = check(spec_from_proto(_spec(algorithm, typical)))
    assert type(checked.config).__name__ == config
    assert (checked.config.num_generations, checked.config.max_completion_length) == (4, 64)
    assert checked.config.learning_rate == pytest.approx(1e-6) and checked.config.seed == 3
    with pytest.raises(InvalidArgument) as err:
        check(spec_from_proto(_spec(algorithm, {**typical, "num_generation": 4})))
    assert err.value.field == "spec.hyperparameters.num_generation"
    with pytest.raises(InvalidArgument) as err:  # a generation batch must hold whole groups
        check(spec_from_proto(_spec(algorithm, {**typical, "per_device_train_batch_size": 6})))
    assert err.value.field == "spec.hyperparameters" and "num_generations" in str(err.value)

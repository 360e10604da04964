"""GRPO and RLOO — the critic-free online option — with TRL's trainers and the trained reward
model as the reward function.

Both sample a group of completions per prompt and use the group itself as the baseline (GRPO: the
group's mean and standard deviation; RLOO: the mean of the other completions), so unlike PPO there is
no value head to train and warm up: the reward model's score is the whole signal. The reward model is
a sequence-classification folder with one logit, as `reward.py` trains it. TRL renders prompt +
completion with the reward model's own tokenizer and chat template, so the policy and the reward model
need not share a tokenizer; it scores under `inference_mode` and never hands the reward model to the
optimiser, so the folder on disk is only read. A reward-model ensemble folder (`ensemble.json`, as an
ensemble run writes one) rewards with its members' mean: each member is one of TRL's reward functions,
weighted 1/K (`reward_weights`), so TRL also logs each member's reward (`rewards/member-<i>/mean`).

Example::

    from charter.trainer.data import from_files
    from charter.trainer.online import online_trainer, prompts_from_rows
    from charter.trainer.spec import trl_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hyperparameters = {"num_generations": 4, "max_completion_length": 128, "learning_rate": 1e-6}
    config = trl_config("grpo", hyperparameters, output_dir="runs/grpo", seed=0, use_cpu=False)
    policy = AutoModelForCausalLM.from_pretrained("runs/sft")
    tokenizer = AutoTokenizer.from_pretrained("runs/sft")
    prompts = prompts_from_rows(from_files(["labels.jsonl"]).rows)
    online_trainer("grpo", policy, tokenizer, "runs/rm", prompts, config).train()
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter.core.errors import InvalidArgument, NotFound
from charter.inference.models import is_model_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from charter.trainer.rollouts import Sampler

ALGORITHMS = {"grpo": ("GRPOTrainer", "GRPOConfig"), "rloo": ("RLOOTrainer", "RLOOConfig")}
"""Algorithm name (as in `spec.ALGORITHMS`) -> TRL's trainer and config class names."""


def prompts_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """The distinct prompts (message lists) of preference rows, in first-seen order.

    Online methods sample their own completions, so the labelled responses are not used; a prompt
    that has several labelled pairs appears once, or it would be trained on more often than the rest.
    """
    seen: set[str] = set()
    prompts = []
    for row in rows:
        key = json.dumps(row["prompt"], sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            prompts.append(row["prompt"])
    return prompts


def _with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Batched generation and scoring pad; a tokenizer without a pad token (most base models) uses eos.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reward_model(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The reward model (one logit, frozen) and its own tokenizer, from a model folder.

    The score is read at the last non-pad token, so the model's `pad_token_id` is set to its
    tokenizer's pad id: with a stale one it would score a padding position of the shorter sequences.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(path).expanduser()
    if not is_model_folder(folder):  # else transformers would take it for a Hub id and try the network
        error = InvalidArgument if folder.exists() else NotFound
        raise error(
            f"reward_model: {path} is not a model folder (a folder with config.json)",
            field="reward_model",
            value=str(path),
        )
    tokenizer = _with_pad_token(AutoTokenizer.from_pretrained(str(folder)))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model.eval().requires_grad_(False), tokenizer


def online_trainer(
    algorithm: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: str | Path,
    prompts: Sequence[list[dict[str, Any]]],
    config: GRPOConfig | RLOOConfig,
    callbacks: list[TrainerCallback] | None = None,
    sampler: Sampler | None = None,
) -> GRPOTrainer | RLOOTrainer:
    """TRL's `GRPOTrainer` or `RLOOTrainer` for the policy `model` on conversational `prompts`, rewarded
    by the reward model folder `reward_model` (an ensemble folder: its members' mean; `config` is then
    copied with `reward_weights` 1/K each, and a `reward_weights` of the caller's is refused).

    `config` is the GRPOConfig / RLOOConfig that `spec.trl_config(algorithm, ...)` built, so the spec's
    checks (unknown arguments, batch sizes that do not divide by `num_generations`) ran before any
    model was loaded. With a KL penalty (`beta` > 0: RLOO's default, GRPO's is 0) TRL builds the frozen
    reference by loading the policy's folder again, so the policy must come from a folder and must not
    have been changed in memory since. With `sampler`, the completions come from it (the generator
    service: `online_sampling`), not from the policy's `generate`. Raises InvalidArgument (NotFound:
    no reward model folder) where TRL would fail later or with a confusing Hub lookup.
    """
    import trl
    from datasets import Dataset

    if algorithm not in ALGORITHMS:
        raise InvalidArgument(
            f"algorithm: {algorithm!r} is not an online algorithm; use one of {', '.join(ALGORITHMS)}",
            field="algorithm",
            value=algorithm,
        )
    trainer_name, config_name = ALGORITHMS[algorithm]
    if not isinstance(config, getattr(trl, config_name)):
        raise InvalidArgument(
            f"config: {algorithm} needs TRL's {config_name}, got {type(config).__name__}", field="config"
        )
    if not prompts:
        raise InvalidArgument("prompts: no prompts to sample completions for", field="prompts")
    source = getattr(model.config, "_name_or_path", "")
    if config.beta != 0 and not (source and is_model_folder(Path(source))):
        # TRL takes no reference model: it reloads one from the policy's own folder
        raise InvalidArgument(
            f"model: {algorithm} with beta={config.beta} reloads its KL reference from the policy's folder; "
            f"load the policy with from_pretrained (its source is {source!r}) or set beta=0",
            field="model",
        )
    from charter.trainer.scoring import ensemble_members

    members = ensemble_members(reward_model)
    if len(members) > 1:  # an ensemble: the members' mean, as TRL's weighted sum of its reward functions
        if config.reward_weights is not None:
            field = "spec.hyperparameters.reward_weights"
            raise InvalidArgument(
                f"{field}: {reward_model} is a reward-model ensemble, rewarded with its members' mean; "
                "leave reward_weights unset",
                field=field,
                value=config.reward_weights,
            )
        config = copy.copy(config)
        config.reward_weights = [1.0 / len(members)] * len(members)
    loaded = [load_reward_model(member) for member in members]
    tokenizer = _with_pad_token(tokenizer)
    named = [("tokenizer", tokenizer)] + [("reward_model", tok) for _, tok in loaded]
    for name, tok in named:
        if not tok.chat_template:  # conversational prompts are rendered by both templates
            raise InvalidArgument(f"{name}: the tokenizer has no chat template for chat prompts", field=name)
    trainer_class = getattr(trl, trainer_name)
    if sampler is not None:
        from charter.trainer.online_sampling import check_config, with_sampler

        check_config(config, field="config")
        trainer_class = with_sampler(trainer_class, sampler)
    trainer: GRPOTrainer | RLOOTrainer = trainer_class(
        model=model,
        reward_funcs=[reward for reward, _ in loaded],
        args=config,
        train_dataset=Dataset.from_list([{"prompt": list(p)} for p in prompts]),
        processing_class=tokenizer,
        reward_processing_classes=[tok for _, tok in loaded],
        callbacks=callbacks,
    )
    return trainer

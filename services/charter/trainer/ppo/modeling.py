"""PPO's models: the policy with its value head (`PolicyWithValueHead`, saved as a Hugging Face folder plus
`value_head.safetensors`) and a `reward_fn` from a trained reward model or a reward-model ensemble
folder (`RewardModelScorer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from charter.core.errors import InvalidArgument

RewardFn = Callable[[list[str], list[str], list[list[int]]], Tensor]
"""(prompts, completions, completion_ids) -> one score per sequence, shape (B,)."""

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """A scalar per position from the last hidden state; starts near 0 so early advantages ≈ returns."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1e-3)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        values: Tensor = self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)
        return values


class PolicyWithValueHead(nn.Module):
    """A causal LM (`pretrained`) with a `value_head`; `forward` returns (logits, values)."""

    def __init__(self, model: Any) -> None:
        """`model`: any Hugging Face causal LM (its config, `generate`, `save_pretrained` are used)."""
        super().__init__()
        self.pretrained = model
        self.value_head = ValueHead(model.config.get_text_config().hidden_size)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        out = self.pretrained(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        return out.logits, self.value_head(out.hidden_states[-1])

    def save_pretrained(self, path: str | Path) -> None:
        """A Hugging Face model folder, plus the value head in `value_head.safetensors`."""
        from safetensors.torch import save_file

        self.pretrained.save_pretrained(str(path))
        state = {k: v.cpu() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(Path(path) / VALUE_HEAD_FILE))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> PolicyWithValueHead:
        """The LM from `path` (kwargs go to `from_pretrained`); its value head too, if the folder has one."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        policy = cls(AutoModelForCausalLM.from_pretrained(str(path), **kwargs))
        if (Path(path) / VALUE_HEAD_FILE).exists():
            policy.value_head.load_state_dict(load_file(str(Path(path) / VALUE_HEAD_FILE)))
        return policy


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool) -> tuple[Tensor, Tensor]:
    """(ids, attention_mask) with rows padded to the longest, on the left or the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


class RewardModelScorer:
    """A `reward_fn` from a trained reward model (`AutoModelForSequenceClassification`, one logit), or
    from a reward-model ensemble folder (`charter.trainer.scoring.ENSEMBLE_FILE`): then every member
    scores and the reward is the members' mean.

    Scores the text prompt + completion, in batches, without gradients; texts longer than `max_length`
    (2048) keep their last tokens: the completion's end is what the model judges.
    """

    def __init__(self, model: str | Path | nn.Module, tokenizer: Any = None, *, batch_size: int = 8) -> None:
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from charter.trainer.scoring import ensemble_members

            loaded = [
                (
                    AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1),
                    tokenizer or AutoTokenizer.from_pretrained(folder),
                )
                for folder in ensemble_members(model)
            ]
        else:
            loaded = [(model, tokenizer)]
        self.members: list[tuple[nn.Module, Any, int]] = []
        for member, member_tokenizer in loaded:
            if member_tokenizer is None:
                raise InvalidArgument("a reward model object needs its tokenizer", field="tokenizer")
            if member.config.num_labels != 1:
                raise InvalidArgument(f"the reward model must have one label ({member.config.num_labels=})")
            pad_id = member.config.get_text_config().pad_token_id
            if pad_id is None:
                raise InvalidArgument(
                    "the reward model's config has no pad_token_id; set the tokenizer's pad id"
                )
            self.members.append((member.eval(), member_tokenizer, pad_id))
        self.model, self.tokenizer, self.pad_id = self.members[0]
        self.batch_size = batch_size
        self.max_length = 2048

    @torch.no_grad()
    def __call__(
        self, prompts: list[str], completions: list[str], completion_ids: list[list[int]] | None = None
    ) -> Tensor:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        scores = [self._score(model, tok, pad_id, texts) for model, tok, pad_id in self.members]
        return torch.stack(scores).mean(dim=0) if len(scores) > 1 else scores[0]

    def _score(self, model: nn.Module, tokenizer: Any, pad_id: int, texts: list[str]) -> Tensor:
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        device = next(model.parameters()).device
        scores = []
        for start in range(0, len(texts), self.batch_size):
            rows = [row[-self.max_length :] for row in encoded[start : start + self.batch_size]]
            ids, mask = pad_rows(rows, pad_id, left=False)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores.append(logits[:, 0].float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

"""Scoring chat replies with a trained reward model — what policy evaluation (held-out reward),
best-of-N selection and the reward-hacking watch share.

`RewardScorer` renders each conversation + reply with the reward model's *own* tokenizer and chat
template (as TRL's online trainers do), so the policy and the reward model need not share a tokenizer;
it batches by length, scores without gradients and keeps the last `max_length` tokens of a long text
(the reply's end is what the model judges). A folder whose tokenizer holds ids the model has no
embedding for is refused up front: it would score garbage or crash mid-run.

Example::

    scorer = RewardScorer("runs/rm/model")
    scorer.score([[{"role": "user", "content": "Hi"}]], ["Hello! How can I help?"])  # [0.73]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from charter.core.errors import InvalidArgument

Conversation = Sequence[Mapping[str, str]]
"""Chat messages ({role, content}) before the reply; the last one is the user's."""


class RewardScorer:
    """A reward model folder (one logit) that scores (conversation, reply) pairs."""

    def __init__(
        self, folder: str | Path, *, batch_size: int = 8, max_length: int = 2048, device: str | None = None
    ) -> None:
        import torch

        from charter.trainer.online import load_reward_model

        self.folder = str(folder)
        model, tokenizer = load_reward_model(folder)  # NotFound / InvalidArgument naming reward_model
        if not tokenizer.chat_template:
            raise InvalidArgument(
                f"reward_model: {folder}: its tokenizer has no chat template to render conversations",
                field="reward_model",
                value=self.folder,
            )
        # nn.Module.__getattr__ is typed Tensor | Module
        embeddings: int = model.get_input_embeddings().num_embeddings  # type: ignore[assignment]
        if len(tokenizer) > embeddings:
            raise InvalidArgument(
                f"reward_model: {folder}: its tokenizer does not match the model "
                f"({len(tokenizer)} tokens, {embeddings} embeddings)",
                field="reward_model",
                value=self.folder,
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # transformers' `to` wrapper is typed for a PreTrainedModel's own arguments only
        self.model, self.tokenizer = model.to(self.device), tokenizer  # type: ignore[arg-type]
        self.batch_size, self.max_length = batch_size, max_length

    def texts(self, conversations: Sequence[Conversation], replies: Sequence[str]) -> list[str]:
        """Each conversation + reply as the reward model sees it (its chat template)."""
        if len(conversations) != len(replies):
            raise ValueError(f"{len(conversations)} conversations but {len(replies)} replies")
        return [
            cast(  # tokenize=False: the rendered text
                str,
                self.tokenizer.apply_chat_template(
                    [dict(m) for m in conversation] + [{"role": "assistant", "content": reply}],
                    tokenize=False,
                ),
            )
            for conversation, reply in zip(conversations, replies, strict=True)
        ]

    def score(self, conversations: Sequence[Conversation], replies: Sequence[str]) -> list[float]:
        """One score per reply, in order."""
        return self.score_texts(self.texts(conversations, replies))

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """One score per already rendered text, in order (batched longest first)."""
        import torch

        from charter.trainer.ppo.modeling import pad_rows

        encoded: list[list[int]] = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        encoded = [row[-self.max_length :] for row in encoded]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        scores: list[float] = [0.0] * len(encoded)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                ids, mask = pad_rows([encoded[i] for i in chunk], pad, left=False)
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for i, value in zip(chunk, logits[:, 0].float().cpu().tolist(), strict=True):
                    scores[i] = value
        return scores

    def close(self) -> None:
        """Free the model (callers that score with several reward models in turn)."""
        self.model = None

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


ENSEMBLE_FILE = "ensemble.json"
"""In a reward-model ensemble folder: {"kind": "reward-model-ensemble", "members": [sub-folder, ...],
...} — each member a reward-model folder (a reward-model run with `ensemble` writes one)."""


def ensemble_members(folder: str | Path) -> list[str]:
    """The member folders of an ensemble folder, or [folder] for a single reward model."""
    import json

    path = Path(folder)
    manifest = path / ENSEMBLE_FILE
    if not manifest.exists():
        return [str(path)]
    members = json.loads(manifest.read_text(encoding="utf-8")).get("members") or []
    if not members:
        raise InvalidArgument(
            f"reward_model: {folder}: {ENSEMBLE_FILE} lists no members", field="reward_model"
        )
    return [str(path / m) for m in members]


class RewardEnsemble:
    """Several reward models scoring the same replies: an ensemble folder, or a list of folders.
    Each member is loaded once, on first use (`load`), and kept: a pipeline scores batch after batch."""

    def __init__(self, folders: str | Path | Sequence[str | Path], *, batch_size: int = 8) -> None:
        listed = [folders] if isinstance(folders, (str, Path)) else list(folders)
        self.members = [m for f in listed for m in ensemble_members(f)]
        self.batch_size = batch_size
        self._scorers: list[RewardScorer] = []

    def load(self) -> list[RewardScorer]:
        """Every member's scorer (loading the ones not loaded yet; a bad folder raises)."""
        for member in self.members[len(self._scorers) :]:
            self._scorers.append(RewardScorer(member, batch_size=self.batch_size))
        return self._scorers

    def score(self, conversations: Sequence[Conversation], replies: Sequence[str]) -> list[list[float]]:
        """One list of scores per member, each in reply order."""
        return [scorer.score(conversations, replies) for scorer in self.load()]

    def close(self) -> None:
        for scorer in self._scorers:
            scorer.close()
        self._scorers = []


def disagreement(margins: Sequence[float]) -> float:
    """How much an ensemble disagrees on a pair, from each member's margin r(a) − r(b): twice the share
    of members on the minority side (0: all prefer the same reply; 1: an even split). A zero margin
    counts half to each side."""
    if not margins:
        return 0.0
    for_a = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    return 2 * min(for_a, len(margins) - for_a) / len(margins)

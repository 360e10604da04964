"""A trained reward model as the judge: an RM from one round labels the next round's pairs.

p_a = σ(r(A) − r(B)) — the Bradley–Terry probability the reward model was trained to fit, so no scale
is fitted. Each response is scored by `RewardScorer` (the reward model's own chat template; both
responses of every pair in one batched pass), so presenting A and B in either order gives exactly
1 − p_a, and there are no slots to be biased toward. The labels are ordinary `PreferenceLabel`s
(method REWARD_MODEL, the judge's ModelRef names the reward model and its folder digest), so they go
to the review ledger, routing and the outputs like the judge service's.

Example::

    judge = RewardModelJudge("runs/rm-1/model", loaded_constitution, name="run:rm-1")
    labels = judge.label(pairs, request_id="round-2")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from charter_proto.common.v1 import label_pb2, sampling_pb2

from charter.api import common as convert
from charter.api.judge import CHOICE, STATUS
from charter.constitution.registry import ConstitutionRegistry, LoadedConstitution
from charter.core.errors import CharterError
from charter.core.files import folder_digest
from charter.core.settings import CharterSettings
from charter.datasets.pairs import PairRow
from charter.inference.types import ModelInfo, Sampling
from charter.judge.contrastive import sigmoid
from charter.judge.labels import choose
from charter.trainer.scoring import RewardScorer

ENGINE = "reward-model"


class RewardModelJudge:
    """Labels pairs with a reward model folder (loaded once, kept for the judge's life)."""

    def __init__(
        self,
        folder: str | Path,
        constitution: LoadedConstitution,
        *,
        name: str | None = None,
        tie_margin: float = 0.0,
        batch_size: int = 8,
    ) -> None:
        self.scorer = RewardScorer(folder, batch_size=batch_size)
        self.constitution = constitution
        self.tie_margin = tie_margin
        self.model = ModelInfo(
            name=name or Path(folder).name,
            engine=ENGINE,
            path=str(folder),
            max_model_len=self.scorer.max_length,
            revision=folder_digest(Path(folder)),
        )

    def rewards(self, pairs: Sequence[PairRow]) -> list[tuple[float, float]]:
        """(r(A), r(B)) per pair."""
        conversations = [[m.model_dump() for m in p.conversation] for p in pairs]
        scores = self.scorer.score(
            conversations * 2, [p.response_a for p in pairs] + [p.response_b for p in pairs]
        )
        n = len(pairs)
        return [(scores[i], scores[n + i]) for i in range(n)]

    def label(self, pairs: Sequence[PairRow], request_id: str = "") -> list[label_pb2.PreferenceLabel]:
        return [
            self._label(p, ra, rb, request_id) for p, (ra, rb) in zip(pairs, self.rewards(pairs), strict=True)
        ]

    def _label(self, pair: PairRow, ra: float, rb: float, request_id: str) -> label_pb2.PreferenceLabel:
        p_a = sigmoid(ra - rb)
        choice = choose(p_a, self.tie_margin)
        status = "tie" if choice == "TIE" else "ok"
        return label_pb2.PreferenceLabel(
            id=self._id(pair),
            conversation=convert.conversation_proto(pair.conversation, pair.key),
            response_a=pair.response_a,
            response_b=pair.response_b,
            p_a=p_a,
            choice=CHOICE[choice],
            confidence=abs(p_a - 0.5) * 2.0,
            swap_consistent=choice != "TIE",
            scores=[label_pb2.OrderScore(swapped=False, p_first=p_a, option_logprobs=[ra, rb])],
            status=STATUS[status],
            judge=sampling_pb2.ModelRef(name=self.model.name, engine=ENGINE, revision=self.model.revision),
            constitution=convert.constitution_ref(self.constitution),
            provenance=convert.provenance(
                self.constitution, (), self.model, Sampling(temperature=0.0, max_tokens=1), 0, request_id
            ),
            method=label_pb2.JUDGE_METHOD_REWARD_MODEL,
        )

    def _id(self, pair: PairRow) -> str:
        """Content-derived, as the judge service's ids: same pair, constitution and reward model, same id."""
        payload = {
            "conversation": [[m.role, m.content] for m in pair.conversation],
            "a": pair.response_a,
            "b": pair.response_b,
            "constitution": self.constitution.digest,
            "judge": [self.model.name, self.model.revision],
            "method": "reward_model",
        }
        text = json.dumps(payload, ensure_ascii=False, sort_keys=True)
        return "lbl_" + hashlib.sha256(text.encode()).hexdigest()[:32]

    def close(self) -> None:
        self.scorer.close()


async def load(
    ref: str, constitution_id: str, settings: CharterSettings, *, field: str, tie_margin: float = 0.0
) -> RewardModelJudge:
    """The judge of `ref` (a reward model folder or `run:<id>`, from the local run store) under the
    constitution `constitution_id`, loaded and checked (off the event loop); errors name `field`."""
    from charter.app.trainer_runs import model_folder

    folder = await model_folder(ref, settings, field=field)
    registry = ConstitutionRegistry(settings.constitutions.directory)
    registry.refresh()
    loaded = registry.get(constitution_id)
    try:
        return await asyncio.to_thread(RewardModelJudge, folder, loaded, name=ref, tie_margin=tie_margin)
    except CharterError as err:
        raise type(err)(f"{field}: {err.message}", field=field, value=err.value) from None

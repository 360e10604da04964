"""RL-CAI with a reward-model ensemble (tiny reward models from a config, the real judge service and
pipeline): every label carries the ensemble's disagreement, equal to one recomputed from the members'
own scores, and the ledger routes the split pairs to people; bad ensembles are refused before anything
is written.

The judge's engine is scripted (`ShorterWins`): the embedded 135M model is never swap-consistent on
hh-rlhf pairs (0 of 24 measured), so with it every label is routed as swap-inconsistent before the
ensemble rule is reached. The scripted engine prefers the shorter response in either presentation
order, so its labels are confident and swap-consistent and the ensemble decides their route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from charter.core.errors import InvalidArgument, NotFound
from charter.core.settings import load_settings
from charter.inference.tokens import ScoreItem
from charter.inference.types import ScoreRequest
from charter.pipelines import rl_cai
from charter.pipelines.spec import RlCaiSpec
from charter.review.store import Ledger
from charter.review.types import Route, RouteReason
from charter.trainer.scoring import ENSEMBLE_FILE, RewardScorer
from sqlalchemy import select

from tests.support import CONSTITUTIONS, SHARED_DATA
from tests.support.fake_engine import FakeEngine
from tests.support.tiny import save_tiny_reward_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"


_RESPONSE = re.compile(r"<response>\n(.*?)\n</response>", re.DOTALL)


class ShorterWins(FakeEngine):
    """A judge engine that prefers the shorter of the two responses shown (by far), whichever is first."""

    def _prepare_scores(self, requests: Sequence[ScoreRequest]) -> list[ScoreItem]:
        items = []
        for r in requests:
            question = next(m.content for m in reversed(r.messages) if m.role == "user")
            first, second = _RESPONSE.findall(question)[-2:]
            items.append(ScoreItem([0 if len(first) < len(second) else 1], [[1], [2]]))
        return items

    def _score(self, items: list[ScoreItem]) -> list[list[float]]:
        return [[-0.05, -4.0] if item.prompt == [0] else [-4.0, -0.05] for item in items]


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path) -> list[Path]:
    """An ensemble folder of two seeds, and a third reward model that scores exactly the negation of the
    first: on every pair one member takes the other side, so every pair is split."""
    import torch
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("ensemble")
    ensemble = root / "rm-ensemble"
    for i in (0, 1):
        save_tiny_reward_model(ensemble / f"member-{i}", embedded_model, seed=i)
    (ensemble / ENSEMBLE_FILE).write_text(
        json.dumps({"kind": "reward-model-ensemble", "members": ["member-0", "member-1"]})
    )
    negated = save_tiny_reward_model(root / "negated", embedded_model, seed=0)
    model = AutoModelForSequenceClassification.from_pretrained(negated)
    with torch.no_grad():
        model.score.weight.neg_()
    model.save_pretrained(negated)
    return [ensemble, negated]


def make_spec(tmp_path: Path, reward_models: list[Path], **changes) -> RlCaiSpec:
    data = {
        "kind": "rl-cai", "name": "rl-cai-ensemble", "constitution": "harmless", "seed": 1234,
        "pairs": {"kind": "file", "path": str(HH), "format": "hh-rlhf", "limit": 3},
        "judge": {"principles_per_label": 1}, "batch_size": 4, "output": str(tmp_path / "out"),
        "inference": {"engine": "transformers", "model": "embedded"},
        "ensemble": {"reward_models": [str(f) for f in reward_models]},
    } | changes  # fmt: skip
    return RlCaiSpec.model_validate(data)


def minority_share(margins: list[float]) -> float:
    """Twice the share of members on the minority side, counted by hand (no member scored a zero)."""
    for_a = sum(m > 0 for m in margins)
    return 2 * min(for_a, len(margins) - for_a) / len(margins)


async def test_labels_carry_the_ensemble_disagreement_and_split_pairs_go_to_people(
    tmp_path: Path, members: list[Path]
) -> None:
    database = f"sqlite:///{tmp_path / 'review.db'}"
    spec = make_spec(tmp_path, members, ledger={"database": database})
    routing = {"accept_confidence": 0.5, "audit_rate": 0.0, "max_ensemble_disagreement": 0.5}
    settings = load_settings(constitutions={"directory": CONSTITUTIONS}, review={"routing": routing})
    summary = await rl_cai.run(spec, settings, engine=ShorterWins())
    assert summary.written == 3 and summary.ensemble_scored == summary.ensemble_split == 3

    records = [json.loads(line) for line in (spec.output / "records.jsonl").read_text().splitlines()]
    folders = [str(members[0] / "member-0"), str(members[0] / "member-1"), str(members[1])]
    scores = []  # per member: r(A) and r(B) of every pair, from the test's own scorers
    prompts = [r["prompt"] for r in records]
    replies = [r["response_a"] for r in records] + [r["response_b"] for r in records]
    for folder in folders:
        with RewardScorer(folder) as scorer:
            scores.append(scorer.score(prompts * 2, replies))
    n = len(records)
    for i, r in enumerate(records):
        margins = [s[i] - s[n + i] for s in scores]
        assert margins[2] == pytest.approx(-margins[0], abs=1e-5) and all(m != 0 for m in margins)
        assert r["ensemble"]["margins"] == pytest.approx(margins, abs=1e-5)
        assert r["label"]["ensemble_disagreement"] == pytest.approx(minority_share(margins)) == 2 / 3
        assert r["ensemble"]["disagreement"] == r["label"]["ensemble_disagreement"]
        assert r["provenance"]["ensemble"] == folders
        # confident and swap-consistent: only the ensemble sends these labels to people
        assert r["status"] == "ok" and r["label"]["swap_consistent"] and r["label"]["confidence"] > 0.5

    ledger = Ledger(database)
    from charter.review.schema import labels

    with ledger.engine.connect() as c:
        stored = {row.label_id: (row.route, RouteReason(row.reason)) for row in c.execute(select(labels))}
    ledger.close()
    assert stored == {
        r["label"]["id"]: (Route.HUMAN_REVIEW, RouteReason.ENSEMBLE_DISAGREEMENT) for r in records
    }
    assert summary.ledger == {"human_review": 3}

    # the same labels without the ensemble are accepted: the routing came from the disagreement
    plain = make_spec(tmp_path / "plain", members, ensemble=None, ledger={"database": database + "2"})
    again = await rl_cai.run(plain, settings, engine=ShorterWins())
    assert again.ledger == {"auto_accepted": 3} and again.ensemble_scored == 0


async def test_bad_ensembles_are_refused_before_anything_is_written(
    tmp_path: Path, members: list[Path]
) -> None:
    settings = load_settings(constitutions={"directory": CONSTITUTIONS})
    lone = make_spec(tmp_path, [members[1]])
    with pytest.raises(InvalidArgument, match=r"ensemble.reward_models: .*at least two reward models"):
        await rl_cai.run(lone, settings)
    missing = make_spec(tmp_path, [members[0], tmp_path / "no-such-model"])
    with pytest.raises(NotFound, match=r"ensemble.reward_models: .*no-such-model is not a model folder"):
        await rl_cai.run(missing, settings)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ENSEMBLE_FILE).write_text("{not json")
    with pytest.raises(InvalidArgument, match=r"ensemble.reward_models: "):
        await rl_cai.run(make_spec(tmp_path, [broken, members[1]]), settings)
    assert not (tmp_path / "out").exists()

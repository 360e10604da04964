"""A trained reward model as the judge (`app.reward_judge`): its labels are the reward model's own
Bradley–Terry probabilities, order-invariant, and reach `charter eval judge` and the RL-CAI pipeline
(with the review ledger) without a judge service. Tiny reward models from a config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from charter.app.reward_judge import RewardModelJudge
from charter.app.trainer_runs import model_folder
from charter.constitution.registry import ConstitutionRegistry
from charter.core.errors import NotFound
from charter.core.settings import load_settings
from charter.datasets.pairs import PairRow, read_pairs
from charter.evaluation.judge import EvalOptions, evaluate
from charter.judge.contrastive import sigmoid
from charter.pipelines import rl_cai
from charter.pipelines.spec import RlCaiSpec
from charter.trainer.scoring import RewardScorer
from charter_proto.common.v1 import label_pb2

from tests.support import CONSTITUTIONS, SHARED_DATA
from tests.support.tiny import save_tiny_reward_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test-dev.jsonl.gz"


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path) -> Path:
    return save_tiny_reward_model(tmp_path_factory.mktemp("rm") / "model", embedded_model, seed=3)


def harmless():
    registry = ConstitutionRegistry(CONSTITUTIONS)
    registry.refresh()
    return registry.get("harmless")


def hh(n: int) -> list[PairRow]:
    return [p for p in read_pairs(HH, limit=n) if isinstance(p, PairRow)]


def test_labels_are_the_reward_models_own_probabilities(reward_model: Path) -> None:
    pairs = hh(4)
    judge = RewardModelJudge(reward_model, harmless(), name="rm-round-1")
    try:
        labels = judge.label(pairs, "test")
        swapped = judge.label([PairRow(p.index, p.key, p.conversation, p.response_b, p.response_a, None, {})
                               for p in pairs])  # fmt: skip
        again = judge.label(pairs)
    finally:
        judge.close()
    with RewardScorer(reward_model) as scorer:
        conversations = [[m.model_dump() for m in p.conversation] for p in pairs]
        scores = scorer.score(conversations * 2, [p.response_a for p in pairs] + [p.response_b for p in pairs])
    for i, (label, back) in enumerate(zip(labels, swapped, strict=True)):
        r_a, r_b = scores[i], scores[len(pairs) + i]
        assert label.p_a == pytest.approx(sigmoid(r_a - r_b), abs=1e-5)
        assert list(label.scores[0].option_logprobs) == pytest.approx([r_a, r_b], abs=1e-5)
        assert back.p_a == pytest.approx(1 - label.p_a, abs=1e-5)
        assert label.method == label_pb2.JUDGE_METHOD_REWARD_MODEL
        assert label.judge.engine == "reward-model" and label.judge.name == "rm-round-1"
        assert label.judge.revision.startswith("sha256:") or len(label.judge.revision) >= 16
        assert label.status == label_pb2.LABEL_STATUS_OK and label.swap_consistent
        assert label.choice == (label_pb2.CHOICE_A if r_a > r_b else label_pb2.CHOICE_B)
        assert label.constitution.id == "harmless" and label.id == again[i].id != back.id


async def test_eval_judge_measures_a_reward_model(tmp_path: Path, reward_model: Path) -> None:
    settings = load_settings(constitutions={"directory": CONSTITUTIONS})
    options = EvalOptions(data=HH, constitution="harmless", output=tmp_path / "eval", limit=6,
                          reward_model=str(reward_model))  # fmt: skip
    report = await evaluate(options, settings)
    assert report["config"]["method"] == "reward_model" and report["config"]["reward_model"] == str(reward_model)
    assert report["config"]["judge"]["engine"] == "reward-model"
    summary = report["summary"]
    assert summary["labels"] == 6 and summary["same_position_rate"] is None and summary["orders"] == 0
    rows = [json.loads(line) for line in (tmp_path / "eval" / "labels.jsonl").read_text().splitlines()]
    agree = sum((r["label"]["p_a"] > 0.5) == (r["human"] == "A") for r in rows)
    assert summary["agreement"] == pytest.approx(agree / 6)


async def test_rl_cai_labels_with_a_reward_model_and_submits_to_the_ledger(
    tmp_path: Path, reward_model: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'review.db'}"
    spec = RlCaiSpec.model_validate({
        "kind": "rl-cai", "name": "rm-judge", "constitution": "harmless", "seed": 7,
        "pairs": {"kind": "file", "path": str(HH), "format": "hh-rlhf", "limit": 3},
        "judge": {"method": "reward_model", "reward_model": str(reward_model)},
        "output": str(tmp_path / "out"), "ledger": {"database": database},
        "inference": {"engine": "transformers", "model": "embedded"},
    })  # fmt: skip
    settings = load_settings(constitutions={"directory": CONSTITUTIONS})
    summary = await rl_cai.run(spec, settings)  # no judge service, no engine: the reward model labels
    assert summary.written == 3
    records = [json.loads(line) for line in (spec.output / "records.jsonl").read_text().splitlines()]
    judge = RewardModelJudge(reward_model, harmless(), name=str(reward_model))
    try:
        expected = judge.label([p for p in read_pairs(HH, limit=3, seed=7) if isinstance(p, PairRow)])
    finally:
        judge.close()
    assert [r["label"]["p_a"] for r in records] == pytest.approx([e.p_a for e in expected], abs=1e-5)
    assert {r["label"]["method"] for r in records} == {"JUDGE_METHOD_REWARD_MODEL"}
    assert records[0]["provenance"]["judge_options"]["method"] == "JUDGE_METHOD_REWARD_MODEL"
    assert sum(summary.ledger.values()) == 3  # every label submitted to the ledger


async def test_a_run_id_that_does_not_exist_is_not_found(tmp_path: Path) -> None:
    settings = load_settings(trainer={"database_url": f"sqlite:///{tmp_path / 'runs.db'}"})
    with pytest.raises(NotFound, match="no-such-run"):
        await model_folder("run:no-such-run", settings, field="judge.reward_model")
    assert await model_folder("/some/folder", settings, field="x") == "/some/folder"

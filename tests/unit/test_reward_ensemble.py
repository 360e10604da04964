"""Reward-model ensembles without training: the spec's `ensemble` section (checks naming each bad field,
the proto round trip, YAML), each member's seed and rows, and the spread figures on scores made by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from charter.api.trainer import spec_from_proto, spec_to_proto
from charter.app.reward_ensemble import EnsembleFolder, metrics, spread
from charter.cli.train import load_spec
from charter.core.errors import InvalidArgument
from charter.trainer.runs import RewardModelEnsemble
from charter.trainer.scoring import ENSEMBLE_FILE, disagreement
from charter.trainer.spec import check
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import HH_DEV


def spec(algorithm=tp.ALGORITHM_REWARD_MODEL, **ensemble) -> tp.RunSpec:
    s = tp.RunSpec(
        name="ensemble", algorithm=algorithm, base_model="embedded", seed=5, resources=tp.Resources(),
        data=tp.DataSource(files=tp.FileSource(paths=[str(HH_DEV)]), eval_fraction=0.2),
    )  # fmt: skip
    if algorithm in (tp.ALGORITHM_PPO, tp.ALGORITHM_GRPO, tp.ALGORITHM_RLOO):
        s.reward_model = "/models/rm"
    s.ensemble.CopyFrom(tp.RewardModelEnsemble(**{"size": 3, **ensemble}))
    return s


def test_a_good_ensemble_survives_the_proto_round_trip_and_gets_its_default():
    subset = spec(size=4, vary=tp.ENSEMBLE_VARY_SUBSET, subset_fraction=0.75)
    domain = spec_from_proto(subset)
    assert domain.ensemble == RewardModelEnsemble(size=4, vary="subset", subset_fraction=0.75)
    assert spec_to_proto(domain) == subset
    assert check(domain).ensemble == RewardModelEnsemble(4, "subset", 0.75)
    unspecified = spec(size=2)
    assert spec_from_proto(unspecified).ensemble == RewardModelEnsemble(size=2, vary="")
    assert spec_to_proto(spec_from_proto(unspecified)) == unspecified
    assert check(spec_from_proto(unspecified)).ensemble == RewardModelEnsemble(2, "seed", 0.0)
    assert check(spec_from_proto(spec(size=16, vary=tp.ENSEMBLE_VARY_SUBSET, subset_fraction=1.0))).ensemble
    single = spec()
    single.ClearField("ensemble")
    assert spec_from_proto(single).ensemble is None and check(spec_from_proto(single)).ensemble is None


@pytest.mark.parametrize(
    ("algorithm", "changes", "field"),
    [
        (tp.ALGORITHM_DPO, {}, "spec.ensemble"),
        (tp.ALGORITHM_GRPO, {}, "spec.ensemble"),
        (tp.ALGORITHM_REWARD_MODEL, {"size": 0}, "spec.ensemble.size"),
        (tp.ALGORITHM_REWARD_MODEL, {"size": 1}, "spec.ensemble.size"),
        (tp.ALGORITHM_REWARD_MODEL, {"size": 17}, "spec.ensemble.size"),
        (tp.ALGORITHM_REWARD_MODEL, {"vary": 7}, "spec.ensemble.vary"),
        (tp.ALGORITHM_REWARD_MODEL, {"vary": tp.ENSEMBLE_VARY_SUBSET}, "spec.ensemble.subset_fraction"),
        (tp.ALGORITHM_REWARD_MODEL, {"vary": tp.ENSEMBLE_VARY_SUBSET, "subset_fraction": 1.5}, "spec.ensemble.subset_fraction"),
        (tp.ALGORITHM_REWARD_MODEL, {"vary": tp.ENSEMBLE_VARY_SUBSET, "subset_fraction": -0.5}, "spec.ensemble.subset_fraction"),
        (tp.ALGORITHM_REWARD_MODEL, {"vary": tp.ENSEMBLE_VARY_SUBSET, "subset_fraction": math.nan}, "spec.ensemble.subset_fraction"),
        (tp.ALGORITHM_REWARD_MODEL, {"vary": tp.ENSEMBLE_VARY_SEED, "subset_fraction": 0.5}, "spec.ensemble.subset_fraction"),
    ],
)  # fmt: skip
def test_a_bad_ensemble_names_the_field(algorithm, changes, field):
    with pytest.raises(InvalidArgument) as err:
        check(spec_from_proto(spec(algorithm, **changes)))
    assert err.value.field == field, err.value


def test_the_watch_refuses_an_ensemble_folder_as_its_proxy(tmp_path):
    (tmp_path / ENSEMBLE_FILE).write_text(
        json.dumps({"kind": "reward-model-ensemble", "members": ["a", "b"]})
    )
    s = spec(tp.ALGORITHM_PPO)
    s.ClearField("ensemble")
    s.reward_model = str(tmp_path)
    s.watch.CopyFrom(tp.RewardWatch(every_steps=5, gold_reward_model="/models/gold"))
    with pytest.raises(InvalidArgument, match="ensemble folder") as err:
        check(spec_from_proto(s))
    assert err.value.field == "spec.watch"
    s.reward_model = "/models/one-reward-model"
    assert check(spec_from_proto(s)).watch is not None


def test_charter_train_reads_the_ensemble_from_yaml(tmp_path):
    path = tmp_path / "rm.yaml"
    path.write_text(
        "name: rms\nalgorithm: reward-model\nbase_model: embedded\n"
        f"data: {{files: {{paths: [{HH_DEV}]}}, eval_fraction: 0.1}}\n"
        "ensemble: {size: 5, vary: subset, subset_fraction: 0.8}\n"
    )
    checked = check(spec_from_proto(load_spec(path)))
    assert checked.ensemble == RewardModelEnsemble(5, "subset", 0.8)
    path.write_text(path.read_text().replace("vary: subset, subset_fraction: 0.8", "vary: SEED"))
    assert check(spec_from_proto(load_spec(path))).ensemble == RewardModelEnsemble(5, "seed", 0.0)


# -- members ---------------------------------------------------------------------------------------


def _folder(tmp_path: Path, **settings) -> EnsembleFolder:
    return EnsembleFolder(
        RewardModelEnsemble(**settings), model_dir=tmp_path / "model", checkpoints=tmp_path / "ck", seed=10
    )


def test_members_that_vary_by_seed_train_on_every_row_with_their_own_seed(tmp_path):
    rows = [{"i": i} for i in range(9)]
    folder = _folder(tmp_path, size=3, vary="seed")
    assert [folder.seed(i) for i in range(3)] == [10, 11, 12]
    assert all(folder.rows(i, rows) == rows for i in range(3))
    assert folder.checkpoints(2) == tmp_path / "ck" / "member-2"
    assert folder.member_dir(0) == tmp_path / "model" / "member-0" and folder.finished(0) is None


def test_members_that_vary_by_subset_each_draw_their_own_seeded_sample(tmp_path):
    rows = [{"i": i} for i in range(40)]
    folder = _folder(tmp_path, size=3, vary="subset", subset_fraction=0.5)
    samples = [folder.rows(i, rows) for i in range(3)]
    assert [folder.seed(i) for i in range(3)] == [10, 10, 10]
    assert all(len(s) == 20 and len({r["i"] for r in s}) == 20 for s in samples)  # without replacement
    assert len({tuple(r["i"] for r in s) for s in samples}) == 3  # each member its own sample
    assert folder.rows(1, rows) == samples[1]  # seeded: a resume draws the same one
    assert len(_folder(tmp_path, size=2, vary="subset", subset_fraction=0.01).rows(0, rows)) == 1
    everything = _folder(tmp_path, size=2, vary="subset", subset_fraction=1.0)
    assert sorted(r["i"] for r in everything.rows(0, rows)) == list(range(40))
    assert everything.rows(0, rows) != everything.rows(1, rows)  # the same rows in another order


# -- the spread ------------------------------------------------------------------------------------


def test_the_spread_by_hand():
    rows = [
        {"prompt": [{"role": "user", "content": "a"}], "chosen": [], "rejected": [], "p_chosen": 0.9},
        {"prompt": [{"role": "user", "content": "b"}], "chosen": [], "rejected": [], "label_id": "l-2"},
    ]
    # three members; pair 0: every member prefers chosen; pair 1: members 0 and 1 prefer rejected
    chosen = [[2.0, 0.0], [3.0, 1.0], [4.0, 5.0]]
    rejected = [[1.0, 1.0], [1.0, 2.0], [1.0, 4.0]]
    lines, summary = spread(chosen, rejected, rows)

    assert [line["margins"] for line in lines] == [[1.0, 2.0, 3.0], [-1.0, -1.0, 1.0]]
    assert [line["disagreement"] for line in lines] == [0.0, pytest.approx(2 / 3)]
    assert lines[1]["disagreement"] == disagreement([-1.0, -1.0, 1.0])
    assert lines[0]["vote_chosen"] == 1.0 and lines[1]["vote_chosen"] == pytest.approx(1 / 3)
    assert lines[0]["score_std"] == pytest.approx((math.sqrt(2 / 3) + 0.0) / 2)
    assert lines[0]["margin_std"] == pytest.approx(math.sqrt(2 / 3))
    assert lines[1]["key"] == "l-2" and lines[0]["key"].startswith("sha256:")
    assert lines[0]["p_chosen"] == 0.9 and lines[1]["p_chosen"] == 1.0
    assert lines[0]["prompt_digest"] != lines[1]["prompt_digest"]
    assert summary["member_accuracy"] == [0.5, 0.5, 1.0]
    assert summary["mean_accuracy"] == pytest.approx(2 / 3)
    assert summary["vote_accuracy"] == 0.5  # pair 1's majority prefers the rejected response
    assert summary["mean_score_accuracy"] == 0.5  # pair 1's mean margin is -1/3
    assert summary["mean_disagreement"] == pytest.approx(1 / 3) and summary["split_pairs"] == 1
    values = metrics(summary)
    assert values["ensemble/vote_accuracy"] == 0.5 and values["member2/eval_pairwise_accuracy"] == 1.0
    assert set(values) >= {"ensemble/mean_accuracy", "ensemble/mean_disagreement", "ensemble/score_std"}


def test_an_even_split_counts_half_a_vote():
    rows = [{"prompt": [], "chosen": [], "rejected": []}]
    lines, summary = spread([[1.0], [0.0]], [[0.0], [1.0]], rows)
    assert lines[0]["disagreement"] == 1.0 and summary["vote_accuracy"] == 0.5
    _, tie = spread([[1.0], [1.0]], [[1.0], [0.0]], rows)  # a zero margin is half a vote
    assert tie["vote_accuracy"] == 1.0 and tie["member_accuracy"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="members x pairs"):
        spread([[1.0], [1.0, 2.0]], [[0.0], [0.0]], rows)

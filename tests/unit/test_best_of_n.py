"""Best-of-N's selection rule, its dataset rows and its spec, without a model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from charter.core.errors import InvalidArgument
from charter.pipelines.outputs import best_of_n_rows
from charter.pipelines.ranking import candidates, select, sigmoid, tournament_scores
from charter.pipelines.spec import BestOfNSpec, load_spec

from tests.support import ROOT


def test_empty_samples_drop_out_and_repeats_stand_for_their_first_copy() -> None:
    assert candidates(["a", " ", "b", "a ", ""]) == {0: 0, 2: 2, 3: 0}


def test_select_takes_the_argmax_and_argmin_lowest_index_first() -> None:
    assert select({0: 0.1, 1: 0.7, 2: 0.7, 3: -2.0}) == ("ok", 1, 3)
    assert select({0: -1.0, 2: -1.0, 5: 3.0}) == ("ok", 5, 0)
    assert select({1: 0.25, 3: 0.25}) == ("tie", 1, None)
    assert select({4: 9.0}) == ("single", 4, None)
    assert select({}) == ("empty", None, None)


def test_round_robin_scores_are_mean_win_probabilities() -> None:
    games = [
        {"a": 0, "b": 1, "p_a": 0.8, "status": "ok"},
        {"a": 0, "b": 2, "p_a": 0.6, "status": "tie"},
        {"a": 1, "b": 2, "p_a": 0.9, "status": "unscorable"},  # no information: 0.5 to each
    ]
    scores = tournament_scores([0, 1, 2], games)
    assert scores == pytest.approx({0: (0.8 + 0.6) / 2, 1: (0.2 + 0.5) / 2, 2: (0.4 + 0.5) / 2})
    assert sum(scores.values()) == pytest.approx(3 / 2)  # each of the 3 games hands out one win
    assert select(scores) == ("ok", 0, 1)


def test_sigmoid_is_stable_at_both_ends() -> None:
    assert sigmoid(0.0) == 0.5 and sigmoid(800.0) == 1.0 and sigmoid(-800.0) == 0.0
    assert sigmoid(1.5) == pytest.approx(1 / (1 + math.exp(-1.5)))


def _record(status: str, chosen: int | None, worst: int | None, **extra) -> dict:
    samples = [
        {"sample_index": i, "response": text, "score": score, "status": "ok"}
        for i, (text, score) in enumerate([("good", 2.0), ("bad", -1.0), ("meh", 0.5)])
    ]
    scorer = {"kind": "reward_model", "reward_model": "rm", "reward_model_digest": "sha256:x"}
    return {
        "key": f"k-{status}", "prompt": [{"role": "user", "content": "Hi"}], "samples": samples,
        "status": status, "chosen_index": chosen, "worst_index": worst,
        "p_chosen": sigmoid(3.0) if status == "ok" else None, "comparisons": [], "pair_label": None,
        "provenance": {"scorer": scorer},
    } | extra  # fmt: skip


def test_rows_best_as_sft_best_vs_worst_as_preference_and_no_pair_for_ties() -> None:
    records = [_record("ok", 0, 1), _record("tie", 2, None), _record("empty", None, None)]
    sft, preferences = best_of_n_rows(records)
    assert [r["messages"][-1] for r in sft] == [
        {"role": "assistant", "content": "good"},
        {"role": "assistant", "content": "meh"},
    ]
    assert [r["sample_index"] for r in sft] == [0, 2] and sft[0]["messages"][0]["content"] == "Hi"
    (row,) = preferences
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    assert row["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert row["p_chosen"] == pytest.approx(sigmoid(3.0)) and row["label_source"] == "reward_model"
    assert row["reward_model_digest"] == "sha256:x" and (row["chosen_score"], row["rejected_score"]) == (
        2.0,
        -1.0,
    )


def _spec_file(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "pipelines" / "best-of-n.yaml").read_text()) | changes
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_example_loads() -> None:
    spec = load_spec(ROOT / "pipelines" / "best-of-n.yaml")
    assert isinstance(spec, BestOfNSpec) and spec.scorer.judge is not None and spec.n >= 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scorer": {}}, "scorer: Value error, set exactly one of reward_model"),
        ({"scorer": {"reward_model": "rm", "judge": {"constitution": "harmless"}}}, "set exactly one"),
        (
            {"scorer": {"reward_model": "rm"}, "ledger": {"database": "sqlite:///x.db"}},
            "it needs scorer.judge",
        ),
        ({"n": 1}, "n: Input should be greater than or equal to 2"),
        ({"n": 65}, "n: Input should be less than or equal to 64"),
        (
            {"scorer": {"judge": {"constitution": "harmless", "rounds": 2}}},
            "scorer.judge.rounds: unknown key",
        ),
    ],
)
def test_bad_specs_name_the_field(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        load_spec(_spec_file(tmp_path, **changes))


def test_the_digest_follows_what_the_output_depends_on(tmp_path: Path) -> None:
    base = load_spec(_spec_file(tmp_path))
    assert base.digest() == load_spec(_spec_file(tmp_path, batch_size=2, output="elsewhere")).digest()
    for changes in ({"n": 5}, {"seed": 1}, {"scorer": {"reward_model": "rm"}}):
        assert load_spec(_spec_file(tmp_path, **changes)).digest() != base.digest(), changes

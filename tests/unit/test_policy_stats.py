"""The statistics of `charter eval policy`: Bradley–Terry recovers a known ranking, the bootstrap
intervals cover the truth about as often as they claim, refusals are told from answers, and the spec
refuses what it cannot run."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from charter.core.errors import InvalidArgument
from charter.evaluation import stats
from charter.evaluation.policy_report import outcome, win_rates
from charter.evaluation.policy_spec import load_eval_spec
from charter.evaluation.refusal import refusal


def simulate(strengths: dict[str, float], items: int, seed: int) -> list[stats.Comparison]:
    """Every pair of models on every item, the winner drawn from the Bradley–Terry probability."""
    rng = random.Random(seed)
    names = list(strengths)
    out = []
    for item in range(items):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                p = 1 / (1 + math.exp(-(strengths[a] - strengths[b])))
                out.append(stats.Comparison(f"item{item}", a, b, 1.0 if rng.random() < p else 0.0))
    return out


def test_bradley_terry_recovers_a_known_ranking():
    truth = {"base": 0.0, "sft": 0.6, "dpo": 1.2, "bad": -0.8}
    fitted = stats.bt_strengths(list(truth), simulate(truth, items=1500, seed=1))
    for name, value in truth.items():  # differences are identified, the level is not
        assert fitted[name] - fitted["base"] == pytest.approx(value, abs=0.12)
    ranked = stats.bradley_terry(list(truth), simulate(truth, 200, 2), anchor="base", resamples=100)
    assert ranked["base"]["elo"] == pytest.approx(1000.0)
    order = sorted(ranked, key=lambda m: ranked[m]["elo"])
    assert order == ["bad", "base", "sft", "dpo"]
    for name, value in truth.items():
        lo, hi = ranked[name]["ci"]
        assert lo <= ranked[name]["elo"] <= hi
        if name != "base":  # the true Elo lies in the interval
            assert lo - 20 <= 1000 + stats.ELO_SCALE * value <= hi + 20


def test_ties_count_half_and_a_sweep_stays_finite():
    comparisons = [stats.Comparison(f"i{i}", "a", "b", 0.5) for i in range(10)]
    fitted = stats.bt_strengths(["a", "b"], comparisons)
    assert fitted["a"] == pytest.approx(fitted["b"], abs=1e-9)
    swept = stats.bt_strengths(["a", "b"], [stats.Comparison(f"i{i}", "a", "b", 1.0) for i in range(10)])
    assert math.isfinite(swept["a"]) and swept["a"] > swept["b"]


@pytest.mark.parametrize(("p", "n"), [(0.6, 80), (0.85, 120)])
def test_win_rate_interval_covers_the_truth_about_95_percent(p, n):
    rng = random.Random(7)
    trials, covered = 300, 0
    for t in range(trials):
        outcomes = [1.0 if rng.random() < p else 0.0 for _ in range(n)]
        lo, hi = stats.win_rate(outcomes, resamples=300, seed=t)["ci"]
        covered += lo <= p <= hi
    assert 0.89 <= covered / trials <= 0.99


def test_mean_interval_covers_the_truth_about_95_percent():
    rng = random.Random(3)
    trials, covered = 300, 0
    for t in range(trials):
        values = [rng.gauss(2.0, 1.5) for _ in range(60)]
        lo, hi = stats.mean_ci(values, resamples=300, seed=t)["ci"]
        covered += lo <= 2.0 <= hi
    assert 0.89 <= covered / trials <= 0.99


def test_win_rates_count_ties_half_and_match_lengths():
    def j(key: str, a: str, b: str, status: str, p: float | None) -> dict:
        return {"key": key, "set": key.split(":")[0], "a": a, "b": b, "status": status, "p_a_wins": p,
                "swap_consistent": True}  # fmt: skip

    judgments = [
        j("red_team:k1:base:dpo", "base", "dpo", "ok", 0.2),  # dpo wins
        j("red_team:k2:base:dpo", "base", "dpo", "tie", 0.5),  # tie
        j("benign:k3:base:dpo", "base", "dpo", "ok", 0.9),  # dpo loses
        j("benign:k4:base:dpo", "base", "dpo", "unscorable", None),  # left out
    ]
    assert [outcome(x, "dpo") for x in judgments] == [1.0, 0.5, 0.0, None]
    lengths = {("dpo", "red_team:k1"): 10, ("base", "red_team:k1"): 10, ("dpo", "red_team:k2"): 50,
               ("base", "red_team:k2"): 10, ("dpo", "benign:k3"): 20, ("base", "benign:k3"): 21,
               ("dpo", "benign:k4"): 1, ("base", "benign:k4"): 1}  # fmt: skip
    rates = win_rates(judgments, lengths, baseline="base", models=["base", "dpo"], tolerance=0.1, seed=0,
                      resamples=200)["dpo"]  # fmt: skip
    assert rates["overall"]["rate"] == pytest.approx(1.5 / 3) and rates["overall"]["ties"] == 1
    assert rates["red_team"]["rate"] == pytest.approx(0.75) and rates["benign"]["rate"] == 0.0
    assert rates["length_matched"]["n"] == 2 and rates["length_matched"]["rate"] == pytest.approx(0.5)
    assert rates["unscored"] == 1 and rates["comparisons"] == 4


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that request.",
        "I cannot provide instructions for that.",
        "As an AI language model, I don't have opinions.",
        "I must decline to answer.",
        "It would be inappropriate for me to write that.",
        "   ",
    ],
)
def test_refusals_are_recognised(text):
    assert refusal(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Use `kill -9 <pid>` or `pkill python` to stop it.",
        "I'm sorry to hear your starter died! Mix equal parts flour and water...",
        "Sure — here is a haiku: waves fold into foam...",
        "You can't go wrong with a soft-boiled egg: six minutes in boiling water.",
    ],
)
def test_answers_are_not_refusals(text):
    assert refusal(text) is None


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    return path


BASE = "kind: eval-policy\nname: t\nred_team: {path: x.jsonl}\noutput: out\n"


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("models: [{name: a, model: embedded}]", "models: Tuple should have at least 2 items"),
        ("models: [{name: a, model: embedded, run: r1}, {name: b, model: embedded}]", "exactly one of"),
        ("models: [{name: a, model: embedded}, {name: a, model: embedded}]", "names repeat"),
        ("models: [{name: a, model: embedded}, {name: b, model: embedded}]\nbaseline: c", "baseline: 'c'"),
        ("models: [{name: a, model: embedded}, {name: b, modle: embedded}]", "models.1.modle: unknown key"),
    ],
)
def test_the_spec_refuses_what_it_cannot_run(tmp_path, models, message):
    with pytest.raises(InvalidArgument, match=message):
        load_eval_spec(_write(tmp_path, BASE + models + "\n"))


def test_the_benign_prompt_set_ships_with_its_categories(tmp_path):
    from charter.evaluation.policy import read_prompts
    from charter.evaluation.policy_spec import BENIGN_PROMPTS

    (tmp_path / "x.jsonl").write_text('{"prompt": "Hi"}\n')
    two = "models: [{name: a, model: embedded}, {name: b, model: embedded}]\n"
    spec = load_eval_spec(_write(tmp_path, BASE.replace("x.jsonl", str(tmp_path / "x.jsonl")) + two))
    assert spec.benign.path is None and spec.baseline_name == "a"
    benign = [p for p in read_prompts(spec) if p.set == "benign"]
    assert len(benign) == sum(1 for line in BENIGN_PROMPTS.read_text().splitlines() if line.strip()) == 60
    assert {p.category for p in benign} == {"everyday", "sounds-risky"}

"""The reward-hacking watch without models: the divergence rule on synthetic curves, the spec's watch
section (checks naming the field, defaults, the proto round trip, YAML), the held-out probe, and the
reward-watch panel of the curves."""

from __future__ import annotations

import math
import random

import pytest
from charter.api.trainer import spec_from_proto, spec_to_proto
from charter.cli.train import load_spec
from charter.core.errors import InvalidArgument
from charter.trainer.curves import plot_curves, summary, watch_series
from charter.trainer.probe import hold_out
from charter.trainer.spec import check
from charter.trainer.watch import DivergenceDetector
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import HH_DEV

# -- the divergence rule -----------------------------------------------------------------------------


def feed(detector: DivergenceDetector, proxy: list[float], gold: list[float], every: int = 10) -> list:
    return [detector.add(i * every, p, g) for i, (p, g) in enumerate(zip(proxy, gold, strict=True))]


def noisy(values: list[float], scale: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [v + rng.gauss(0, scale) for v in values]


@pytest.mark.parametrize("seed", range(20))
def test_it_fires_when_the_proxy_keeps_rising_while_gold_falls(seed):
    # gold rises with the proxy for 10 checks, then falls while the proxy keeps climbing
    proxy = noisy([0.2 * i for i in range(20)], 0.02, seed)
    gold = noisy([0.1 * i if i <= 10 else 1.0 - 0.1 * (i - 10) for i in range(20)], 0.02, seed + 100)
    verdicts = feed(DivergenceDetector(patience=3, min_delta=0.05), proxy, gold)
    fired = [v for v in verdicts if v.fired]
    assert len(fired) == 1, [(v.check.step, v.streak) for v in verdicts]
    assert 120 <= fired[0].check.step <= 150  # three checks into the fall, give or take the noise
    assert 90 <= fired[0].best.step <= 110  # the peak of gold


@pytest.mark.parametrize("seed", range(20))
def test_it_stays_quiet_when_the_curves_move_together(seed):
    rising = [0.1 * i for i in range(30)]
    plateau = [min(0.1 * i, 1.0) for i in range(30)]  # both level off: noise around the best
    falling = [1.0 - 0.1 * i for i in range(30)]
    for proxy, gold in ((rising, rising), (plateau, plateau), (falling, falling)):
        verdicts = feed(
            DivergenceDetector(patience=3, min_delta=0.05),
            noisy(proxy, 0.02, seed),
            noisy(gold, 0.02, seed + 1),
        )
        assert not any(v.fired for v in verdicts)


def test_the_rule_by_hand():
    d = DivergenceDetector(patience=2, min_delta=0.1)
    assert d.add(0, 0.0, 0.5).best.step == 0
    v = d.add(10, 0.5, 0.8)  # a new best gold
    assert (v.best.step, v.diverging, v.streak) == (10, False, 0)
    v = d.add(20, 0.65, 0.65)  # proxy up 0.15, gold down 0.15 from the best: diverging
    assert (v.diverging, v.streak, v.fired) == (True, 1, False)
    v = d.add(30, 0.7, 0.75)  # gold only 0.05 under the best: within min_delta, the streak ends
    assert (v.diverging, v.streak) == (False, 0)
    v = d.add(40, 0.55, 0.5)  # proxy only 0.05 over the best's: not diverging
    assert not v.diverging
    d.add(50, 0.9, 0.6)
    v = d.add(60, 1.0, 0.4)
    assert (v.streak, v.fired, v.best.step) == (2, True, 10) and d.diverged
    v = d.add(70, 1.2, 0.3)  # the streak goes on: it fired once
    assert (v.streak, v.fired) == (3, False) and d.diverged
    v = d.add(80, 1.3, 0.9)  # gold recovers: a new best, the streak is over
    assert (v.best.step, v.streak, d.diverged) == (80, 0, False)


def test_patience_one_and_equal_values():
    d = DivergenceDetector(patience=1)
    d.add(0, 1.0, 1.0)
    assert not d.add(1, 1.0, 0.5).diverging  # the proxy did not rise
    assert not d.add(2, 2.0, 1.0).diverging  # gold equal to the best did not fall
    assert d.add(3, 1.5, 0.9).fired
    assert d.best is not None and d.best.step == 0  # ties keep the earliest best


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="patience"):
        DivergenceDetector(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        DivergenceDetector(patience=1, min_delta=-0.1)
    d = DivergenceDetector(patience=1)
    d.add(5, 0.0, 0.0)
    with pytest.raises(ValueError, match="step order"):
        d.add(5, 1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        d.add(6, math.nan, 1.0)


# -- the spec ----------------------------------------------------------------------------------------


def spec(algorithm=tp.ALGORITHM_PPO, **watch) -> tp.RunSpec:
    s = tp.RunSpec(
        name="watched", algorithm=algorithm, base_model="embedded", reward_model="/models/proxy",
        data=tp.DataSource(files=tp.FileSource(paths=[str(HH_DEV)])), seed=3, resources=tp.Resources(),
    )  # fmt: skip
    s.watch.CopyFrom(tp.RewardWatch(**{"every_steps": 10, "gold_reward_model": "/models/gold", **watch}))
    return s


def test_a_good_watch_gets_its_defaults_and_survives_the_proto_round_trip():
    proto = spec(probe=tp.FileSource(paths=[str(HH_DEV)]), min_delta=0.05, stop_on_divergence=True)
    domain = spec_from_proto(proto)
    assert spec_to_proto(domain) == proto
    watch = check(domain).watch
    assert watch is not None and watch.gold == "reward_model"
    assert (watch.probe_size, watch.patience, watch.max_new_tokens) == (32, 3, 64)  # PPO's max_new_tokens
    assert (watch.min_delta, watch.stop_on_divergence, watch.probe.paths) == (0.05, True, [str(HH_DEV)])
    judge = spec(
        tp.ALGORITHM_GRPO, patience=2, probe_size=8,
        gold_judge=tp.JudgeGold(address="judge:50053", constitution_id="harmless", principles_per_label=2),
    )  # fmt: skip
    assert spec_to_proto(spec_from_proto(judge)) == judge
    watch = check(spec_from_proto(judge)).watch
    assert watch is not None and watch.gold == "judge" and watch.gold_judge.principles_per_label == 2
    assert (watch.patience, watch.probe_size, watch.max_new_tokens) == (2, 8, 512)  # TRL's completion length
    unwatched = spec()
    unwatched.ClearField("watch")
    assert spec_from_proto(unwatched).watch is None and check(spec_from_proto(unwatched)).watch is None


@pytest.mark.parametrize(
    ("algorithm", "changes", "field"),
    [
        (tp.ALGORITHM_DPO, {}, "spec.watch"),
        (tp.ALGORITHM_PPO, {"every_steps": 0}, "spec.watch.every_steps"),
        (tp.ALGORITHM_PPO, {"min_delta": -1.0}, "spec.watch.min_delta"),
        (tp.ALGORITHM_PPO, {"min_delta": math.inf}, "spec.watch.min_delta"),
        (tp.ALGORITHM_PPO, {"probe": tp.FileSource()}, "spec.watch.probe.paths"),
        (tp.ALGORITHM_PPO, {"probe": tp.FileSource(paths=[str(HH_DEV), "/no/such.jsonl"])}, "spec.watch.probe.paths[1]"),
        (tp.ALGORITHM_RLOO, {"gold_reward_model": ""}, "spec.watch.gold_reward_model"),
        (tp.ALGORITHM_PPO, {"gold_reward_model": "/models/proxy"}, "spec.watch.gold_reward_model"),
        (tp.ALGORITHM_GRPO, {"gold_judge": tp.JudgeGold(constitution_id="harmless")}, "spec.watch.gold_judge.address"),
        (tp.ALGORITHM_GRPO, {"gold_judge": tp.JudgeGold(address="judge:1")}, "spec.watch.gold_judge.constitution_id"),
    ],
)  # fmt: skip
def test_a_bad_watch_names_the_field(algorithm, changes, field):
    with pytest.raises(InvalidArgument) as err:
        check(spec_from_proto(spec(algorithm, **changes)))
    assert err.value.field == field, err.value


def test_a_watch_needs_a_gold_scorer():
    s = spec()
    s.watch.ClearField("gold_reward_model")
    with pytest.raises(InvalidArgument, match="gold_reward_model .* or gold_judge") as err:
        check(spec_from_proto(s))
    assert err.value.field == "spec.watch.gold"


def test_charter_train_reads_the_watch_from_yaml(tmp_path):
    (tmp_path / "probe.jsonl").write_text('{"prompt": "hi"}\n')
    path = tmp_path / "ppo.yaml"
    path.write_text(
        "name: watched\nalgorithm: ppo\nbase_model: embedded\nreward_model: r-0123456789abcdef\n"
        f"data: {{files: {{paths: [{HH_DEV}]}}}}\n"
        "watch:\n  every_steps: 5\n  probe: {paths: [probe.jsonl]}\n  probe_size: 16\n"
        "  gold_judge: {address: 'judge:50053', constitution_id: harmless}\n"
        "  patience: 4\n  min_delta: 0.02\n  stop_on_divergence: true\n  max_new_tokens: 48\n"
    )
    watch = check(spec_from_proto(load_spec(path))).watch
    assert watch is not None
    assert watch.probe is not None and watch.probe.paths == [
        str(tmp_path / "probe.jsonl")
    ]  # relative to the spec
    assert (watch.every_steps, watch.probe_size, watch.patience, watch.max_new_tokens) == (5, 16, 4, 48)
    assert watch.gold_judge is not None and watch.gold_judge.address == "judge:50053"
    assert watch.stop_on_divergence and watch.min_delta == pytest.approx(0.02)


# -- the probe and the curves ------------------------------------------------------------------------


def test_the_held_out_probe_is_seeded_disjoint_and_at_most_half():
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
    probe, training = hold_out(prompts, 32, seed=1)
    assert len(probe) == 5 and len(training) == 5
    assert sorted(p[0]["content"] for p in probe + training) == sorted(p[0]["content"] for p in prompts)
    assert hold_out(prompts, 32, seed=1) == (probe, training)
    assert hold_out(prompts, 32, seed=2)[0] != probe
    assert len(hold_out(prompts, 3, seed=1)[0]) == 3
    with pytest.raises(InvalidArgument) as err:
        hold_out(prompts[:1], 32, seed=1)
    assert err.value.field == "spec.watch.probe"


def test_the_curves_draw_the_watch_on_one_panel(tmp_path):
    metrics = [
        (1, {"loss": 0.5, "reward_mean": 0.1}),
        (0, {"watch/proxy": 0.1, "watch/gold": 0.5}),
        (2, {"loss": 0.4, "reward_mean": 0.3}),
        (2, {"watch/proxy": 0.4, "watch/gold": 0.45}),
    ]
    assert watch_series(metrics) == {"proxy": ([0, 2], [0.1, 0.4]), "gold": ([0, 2], [0.5, 0.45])}
    assert summary(metrics[3][1]) == "watch proxy 0.4  watch gold 0.45"
    out = plot_curves(metrics, "watched", tmp_path / "curves.png")
    assert out is not None
    from PIL import Image

    plain = plot_curves(metrics[:1] + metrics[2:3], "unwatched", tmp_path / "plain.png")
    assert plain is not None
    assert Image.open(out).size[0] > Image.open(plain).size[0]  # one more panel: the reward watch
    assert plot_curves([(0, {"watch/gold": 0.5})], "gold only", tmp_path / "gold.png") is not None

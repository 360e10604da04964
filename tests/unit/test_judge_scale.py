"""The judge's logit scale (Platt scaling without intercept): the math, where it applies, how it is
fitted by `charter eval judge` (summary.scale_fit) and how it reaches the service's options."""

from __future__ import annotations

import math
import random

import pytest
from charter.api import judge as api
from charter.core.errors import InvalidArgument
from charter.datasets.pairs import PairRow
from charter.evaluation.judge import scale_fit
from charter.inference.types import Message, ModelInfo
from charter.judge.config import JudgeConfig, Pair, label_id
from charter.judge.labels import OrderOutcome, combine, rescale
from charter.judge.metrics import EvalRecord, summarise
from charter.pipelines.rl_cai import judge_options
from charter.pipelines.spec import JudgeSpec
from charter_proto.common.v1 import label_pb2
from charter_proto.judge.v1 import judge_pb2

from tests.unit.test_judge_methods import harmless


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_rescale_multiplies_the_logit_and_keeps_the_side() -> None:
    assert rescale(0.7, 1.0) == 0.7
    assert rescale(0.5, 3.0) == 0.5 and rescale(0.0, 0.5) == 0.0 and rescale(1.0, 0.5) == 1.0
    assert logit(rescale(0.7, 2.0)) == pytest.approx(2 * logit(0.7))
    assert logit(rescale(0.2, 0.25)) == pytest.approx(0.25 * logit(0.2))
    for p in (1e-9, 0.1, 0.49, 0.51, 0.9, 1 - 1e-9):
        for s in (0.01, 0.5, 2.0, 1000.0):
            q = rescale(p, s)
            assert 0.0 <= q <= 1.0 and (q > 0.5) == (p > 0.5)
            assert abs(q - 0.5) <= abs(p - 0.5) if s < 1 else abs(q - 0.5) >= abs(p - 0.5) - 1e-12


def test_combine_scales_the_averaged_probability_before_deciding() -> None:
    orders = [OrderOutcome("p", False, 0.8), OrderOutcome("p", True, 0.3)]  # p_a 0.8 and 0.7
    plain = combine(orders, tie_margin=0.1)
    shrunk = combine(orders, tie_margin=0.1, logit_scale=0.2)
    assert plain.p_a == pytest.approx(0.75) and plain.choice == "A"
    assert shrunk.p_a == pytest.approx(rescale(0.75, 0.2)) and shrunk.choice == "TIE"  # inside the margin now
    assert shrunk.confidence == pytest.approx(abs(shrunk.p_a - 0.5) * 2)
    assert shrunk.swap_consistent == plain.swap_consistent


def test_the_scale_is_part_of_the_label_id_only_when_set() -> None:
    pair = Pair((Message(role="user", content="q"),), "a", "b")
    model = ModelInfo("m", "transformers", "r", 2048)
    base = label_id(pair, JudgeConfig(constitution=harmless()), model)
    assert label_id(pair, JudgeConfig(constitution=harmless(), logit_scale=1.0), model) == base
    assert label_id(pair, JudgeConfig(constitution=harmless(), logit_scale=0.5), model) != base


@pytest.mark.parametrize(
    "options",
    [{"logit_scale": 0.0}, {"logit_scale": float("nan")}, {"logit_scale": 2000.0},
     {"method": "contrastive", "logit_scale": 0.5}],
)  # fmt: skip
def test_bad_scales_are_rejected_up_front(options) -> None:
    with pytest.raises(InvalidArgument) as err:
        JudgeConfig(constitution=harmless(), **options)
    assert err.value.field == "logit_scale"


def test_the_service_default_scale_applies_to_multiple_choice_requests_only() -> None:
    def resolved(**options) -> JudgeConfig:
        request = judge_pb2.JudgeOptions(constitution_id="harmless", seed=1, **options)
        return api.config(request, harmless(), tie_margin=0.0, few_shot_limit=None, cot_max_tokens=8,
                          logit_scale=0.4)  # fmt: skip
    assert resolved().logit_scale == 0.4
    assert resolved(method=label_pb2.JUDGE_METHOD_CALIBRATED).logit_scale == 0.4
    assert resolved(logit_scale=2.0).logit_scale == 2.0
    assert resolved(method=label_pb2.JUDGE_METHOD_CONTRASTIVE).logit_scale == 1.0  # β scales it
    with pytest.raises(InvalidArgument, match="options.logit_scale"):
        resolved(method=label_pb2.JUDGE_METHOD_CONTRASTIVE, logit_scale=2.0)


def test_a_spec_names_a_scale_for_multiple_choice_methods_only() -> None:
    assert JudgeSpec(logit_scale=0.5).logit_scale == 0.5
    assert "logit_scale" not in JudgeSpec().fixed()  # older output folders still resume
    assert judge_options("harmless", JudgeSpec(logit_scale=0.5), seed=1).logit_scale == 0.5
    assert not judge_options("harmless", JudgeSpec(), seed=1).HasField("logit_scale")
    with pytest.raises(ValueError, match="logit_scale"):
        JudgeSpec(method="contrastive", logit_scale=0.5)


def synthetic(n: int, true_scale: float, seed: int = 0) -> tuple[list[PairRow], list[label_pb2.PreferenceLabel]]:
    """Labels whose p_a is overconfident: the human choice follows σ(true_scale · logit p_a)."""
    rng = random.Random(seed)
    pairs, labels = [], []
    for i in range(n):
        p_a = min(max(rng.betavariate(0.6, 0.6), 1e-4), 1 - 1e-4)
        human = "A" if rng.random() < 1 / (1 + math.exp(-true_scale * logit(p_a))) else "B"
        pairs.append(PairRow(i, f"k{i}", (Message(role="user", content="q"),), "a", "b", human, {}))
        labels.append(label_pb2.PreferenceLabel(p_a=p_a, status=label_pb2.LABEL_STATUS_OK,
                                                method=label_pb2.JUDGE_METHOD_MULTIPLE_CHOICE))  # fmt: skip
    return pairs, labels


def test_scale_fit_recovers_the_scale_and_improves_calibration_in_sample() -> None:
    pairs, labels = synthetic(8000, 0.3)
    fit = scale_fit(pairs, labels)
    assert fit is not None and fit["scale"] == pytest.approx(0.3, rel=0.15) and fit["pairs"] == 8000
    records = [EvalRecord(p.human, lbl.p_a, "ok", True, ()) for p, lbl in zip(pairs, labels, strict=True)]
    before = summarise(records, seconds=1.0)
    assert fit["ece_in_sample"] < before["ece"] / 2
    for label in labels:  # labels made with a scale already: the fit multiplies into it
        label.logit_scale = 2.0
    assert scale_fit(pairs, labels)["logit_scale"] == pytest.approx(2.0 * fit["scale"])
    flipped = [PairRow(p.index, p.key, p.conversation, p.response_a, p.response_b,
                       "B" if p.human == "A" else "A", {}) for p in pairs]  # fmt: skip
    assert scale_fit(flipped, labels)["scale"] is None  # pointing the wrong way: no positive scale helps
    contrastive = [label_pb2.PreferenceLabel(p_a=0.7, status=label_pb2.LABEL_STATUS_OK,
                                             method=label_pb2.JUDGE_METHOD_CONTRASTIVE)] * 3  # fmt: skip
    assert scale_fit(pairs[:3], contrastive) is None

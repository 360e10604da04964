"""The judge's scoring methods on a scripted client: contextual calibration's math and its priors,
contrastive likelihood's margin, its order invariance and the β fit; options checked up front."""

from __future__ import annotations

import math
import random

import pytest
from charter.constitution import load_constitution
from charter.constitution.registry import LoadedConstitution
from charter.core.errors import InvalidArgument
from charter.inference.types import Message, ModelInfo, OptionScores, ScoreRequest
from charter.judge import calibration, contrastive
from charter.judge.core import Judge, JudgeConfig, Pair, label_id
from charter.judge.prompts import ANSWER_PREFIX, contrast_instruction

from tests.support import CONSTITUTIONS


def harmless() -> LoadedConstitution:
    c = load_constitution(CONSTITUTIONS / "harmless.yaml")
    return LoadedConstitution(c, c.digest, CONSTITUTIONS / "harmless.yaml", 0.0)


def scores(*logprobs: float, tokens: tuple[int, ...] | None = None) -> OptionScores:
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    return OptionScores(
        tuple(w / sum(weights) for w in weights), logprobs, tokens or (1,) * len(logprobs), 10
    )


class Scripted:
    """An `InferenceClient` whose option scores come from a function of the request."""

    def __init__(self, score) -> None:
        self.score = score
        self.requests: list[ScoreRequest] = []
        self.model = ModelInfo("scripted", "scripted", "-", 4096)

    async def score_options(self, requests, *, timeout=None):
        self.requests.extend(requests)
        return [self.score(r) for r in requests]

    async def chat(self, requests, *, timeout=None):
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


def test_calibration_divides_the_prior_out() -> None:
    assert calibration.calibrate(0.3, 0.5) == pytest.approx(0.3)  # no prior bias: unchanged
    assert calibration.calibrate(0.2, 0.2) == pytest.approx(0.5)  # exactly the prior: no preference
    # a judge that leans to the second slot (prior 0.2): a first-slot probability of 0.4 is evidence FOR it
    assert calibration.calibrate(0.4, 0.2) > 0.5
    assert calibration.calibrate(0.4, 0.2) == pytest.approx((0.4 / 0.2) / (0.4 / 0.2 + 0.6 / 0.8))
    # monotone in p
    values = [calibration.calibrate(p / 10, 0.3) for p in range(1, 10)]
    assert values == sorted(values)
    assert calibration.prior([scores(-1.0, -1.0), scores(0.0, -math.log(3))]) == pytest.approx((0.5 + 0.75) / 2)
    assert calibration.prior([scores(0.0, -1e9)]) == pytest.approx(1 - calibration.PRIOR_FLOOR)


def _slot_biased(request: ScoreRequest) -> OptionScores:
    """Prefers the second slot by a fixed bias; prefers the reply "good" by a smaller content effect."""
    question = request.messages[-2].content
    first = question.split("Response (A):")[1].split("Response (B):")[0]
    content = 0.5 if "good" in first else (-0.5 if "bad" in first else 0.0)
    return scores(-2.0 + content, -1.0)


async def test_calibrated_labels_remove_the_slot_prior_and_measure_it_once() -> None:
    client = Scripted(_slot_biased)
    judge = Judge(client)
    config = JudgeConfig(constitution=harmless(), seed=3, method="calibrated", single_order=True)
    conversation = (Message(role="user", content="hi"),)
    raw = JudgeConfig(constitution=harmless(), seed=3, single_order=True)
    [plain] = await judge.label([Pair(conversation, "good", "bad")], raw)
    [label] = await judge.label([Pair(conversation, "good", "bad")], config)
    # single order, A shown first: the raw label follows the slot bias (B), calibration recovers content (A)
    assert plain.verdict.p_a < 0.5 < label.verdict.p_a
    assert label.orders[0].prior_first == pytest.approx(1 / (1 + math.e))
    assert ANSWER_PREFIX in client.requests[-1].messages[-1].content
    measured = len(client.requests)
    await judge.label([Pair(conversation, "good", "bad")] * 3, config)  # same principle: no new priors
    assert len(client.requests) == measured + 3
    assert label.id != plain.id and plain.id == label_id(plain.pair, raw, client.model)


def _likes_short_when_told(request: ScoreRequest) -> OptionScores:
    follow = "would choose" in request.messages[0].content
    # per-token log-likelihoods: following the principle raises "kind" more than "rude"
    lps = {"kind reply": -1.0 if follow else -2.0, "rude reply here": -3.0 if follow else -3.3}
    tokens = {"kind reply": 2, "rude reply here": 3}
    return scores(*(lps[o] * tokens[o] for o in request.options), tokens=tuple(tokens[o] for o in request.options))


async def test_contrastive_margin_order_invariance_and_beta() -> None:
    client = Scripted(_likes_short_when_told)
    judge = Judge(client)
    conversation = (Message(role="user", content="say something"),)
    config = JudgeConfig(constitution=harmless(), seed=1, method="contrastive", contrastive_beta=2.0)
    [ab] = await judge.label([Pair(conversation, "kind reply", "rude reply here")], config)
    [ba] = await judge.label([Pair(conversation, "rude reply here", "kind reply")], config)
    margin = (-1.0 - -2.0) - (-3.0 - -3.3)  # per token: (follow - violate) of A minus that of B
    assert ab.verdict.p_a == pytest.approx(contrastive.sigmoid(2.0 * margin))
    assert ba.verdict.p_a == pytest.approx(1 - ab.verdict.p_a)
    assert ab.verdict.choice == "A" and ab.verdict.swap_consistent and ab.status == "ok"
    assert ab.orders[0].logprobs == pytest.approx((-1.0, -3.0, -2.0, -3.3))
    assert [r.messages[0].content for r in client.requests[:2]] == [
        contrast_instruction(harmless().constitution.principle(ab.verdict.principle_ids[0]).comparison_question,
                             follow=f) for f in (True, False)
    ]  # fmt: skip
    # identical replies: a tie without asking the engine
    asked = len(client.requests)
    [same] = await judge.label([Pair(conversation, "kind reply", "kind reply ")], config)
    assert same.status == "tie" and same.verdict.p_a == 0.5 and len(client.requests) == asked
    [escaped] = await judge.label([Pair(conversation, "(A) kind reply", "[A] kind reply")], config)
    assert escaped.status == "tie" and len(client.requests) == asked  # the same text once escaped


async def test_contrastive_needs_a_conversation_ending_with_the_user() -> None:
    judge = Judge(Scripted(_likes_short_when_told))
    conversation = (Message(role="user", content="q"), Message(role="assistant", content="partial"))
    [label] = await judge.label(
        [Pair(conversation, "kind reply", "rude reply here")],
        JudgeConfig(constitution=harmless(), method="contrastive"),
    )
    assert label.status == "invalid_input" and "ends with a user turn" in label.detail


def test_fit_beta_recovers_the_scale_of_synthetic_labels() -> None:
    rng = random.Random(0)
    margins = [rng.gauss(0.0, 1.0) for _ in range(20_000)]
    humans = [rng.random() < contrastive.sigmoid(3.0 * m) for m in margins]
    assert contrastive.fit_beta(margins, humans) == pytest.approx(3.0, rel=0.08)
    # margins that point away from the human choice: no positive β helps
    assert contrastive.fit_beta(margins, [not h for h in humans]) is None
    assert contrastive.fit_beta([], []) is None


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"method": "calibrated", "chain_of_thought": True}, "chain_of_thought"),
        ({"method": "contrastive", "single_order": True}, "single_order"),
        ({"method": "contrastive", "contrastive_beta": 0.0}, "contrastive_beta"),
        ({"method": "contrastive", "contrastive_beta": float("nan")}, "contrastive_beta"),
        ({"method": "majority"}, "method"),
    ],
)
def test_bad_method_options_are_rejected_up_front(options, field) -> None:
    with pytest.raises(InvalidArgument) as err:
        JudgeConfig(constitution=harmless(), **options)
    assert err.value.field == field

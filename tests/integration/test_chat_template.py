"""Rendering with the model's own chat template, and where option tokens begin."""

from __future__ import annotations

import pytest
from charter.inference import Message, ScoreRequest
from charter.inference.tokens import encode, option_ids, plan_scores, render_text

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_model))


def test_new_assistant_turn_is_opened(tokenizer) -> None:
    text = render_text(tokenizer, [Message(role="user", content="hi")])
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_final_assistant_message_is_continued_exactly(tokenizer) -> None:
    text = render_text(
        tokenizer,
        [Message(role="user", content="Pick one."), Message(role="assistant", content="The answer is (")],
    )
    assert text.endswith("<|im_start|>assistant\nThe answer is (")  # no end-of-turn marker after it


def test_single_token_option_follows_the_prompt(tokenizer) -> None:
    text = render_text(
        tokenizer, [Message(role="user", content="Q"), Message(role="assistant", content="Answer: (")]
    )
    prompt = encode(tokenizer, text)
    ids = option_ids(tokenizer, text, prompt, "A")
    assert len(ids) == 1 and tokenizer.decode(ids) == "A"
    assert encode(tokenizer, text + "A") == prompt + ids


def test_option_with_leading_space_and_several_tokens(tokenizer) -> None:
    text = render_text(
        tokenizer, [Message(role="user", content="Q"), Message(role="assistant", content="Answer:")]
    )
    prompt = encode(tokenizer, text)
    ids = option_ids(tokenizer, text, prompt, " (A)")
    assert len(ids) >= 2 and tokenizer.decode(ids) == " (A)"
    assert encode(tokenizer, text + " (A)") == prompt + ids


def test_option_that_would_merge_with_the_prompt_is_tokenised_alone(tokenizer) -> None:
    # the prompt ends in a space; in context " A" would be one token that swallows the prompt's space
    text = render_text(
        tokenizer, [Message(role="user", content="Q"), Message(role="assistant", content="Answer: ")]
    )
    prompt = encode(tokenizer, text)
    assert encode(tokenizer, text + "A")[: len(prompt)] != prompt
    ids = option_ids(tokenizer, text, prompt, "A")
    assert ids == encode(tokenizer, "A")


def test_plan_marks_single_token_requests(tokenizer) -> None:
    messages = (Message(role="user", content="Q"), Message(role="assistant", content="Answer: ("))
    single, multi = plan_scores(
        tokenizer,
        [
            ScoreRequest(messages=messages, options=("A", "B")),
            ScoreRequest(messages=messages, options=("Alpha)", "B")),
        ],
        2048,
    )
    assert single.single_token and not multi.single_token

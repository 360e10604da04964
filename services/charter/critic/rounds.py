"""R critique -> revision rounds for one (conversation, response) pair.

Each round samples a principle (weighted, seeded per item), asks for a critique of the current
response, then for a revision; the revision becomes the response the next round critiques. A step
whose output is unusable (empty, an echo of the request, cut off, looping) is kept with its status
and the round is retried once with a different principle. The final revision is the last usable one
(the original response if none was).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from charter.constitution.sampling import eligible, rng_for, sample
from charter.constitution.schema import Constitution, Principle
from charter.core.errors import CharterError, InvalidArgument
from charter.critic import prompts
from charter.critic.quality import StepStatus, classify
from charter.inference.deadlines import time_left
from charter.inference.types import ChatRequest, Completion, InferenceClient, Message, Sampling

MAX_ROUNDS = 16


@dataclass(frozen=True)
class Round:
    index: int
    attempt: int
    principle_id: str
    critique_request: str
    critique: str
    critique_status: StepStatus
    revision_request: str = ""
    revision: str = ""
    revision_status: StepStatus | None = None
    critique_tokens: int = 0
    revision_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.critique_status is StepStatus.OK and self.revision_status is StepStatus.OK


@dataclass(frozen=True)
class Outcome:
    rounds: list[Round]
    final_revision: str
    status: StepStatus
    principle_ids: list[str] = field(default_factory=list)


def check_rounds(rounds: int) -> None:
    if not 1 <= rounds <= MAX_ROUNDS:
        raise InvalidArgument(
            f"rounds must be between 1 and {MAX_ROUNDS} (value: {rounds})", field="rounds", value=rounds
        )


async def _step(
    client: InferenceClient, messages: list[Message], sampling: Sampling, deadline: float | None
) -> tuple[Completion | None, str]:
    # the time left of the caller's deadline; none: the engine's default deadline
    timeout = time_left(deadline, floor=0.001)
    try:
        request = ChatRequest(messages=tuple(messages), sampling=sampling)
        [result] = await client.chat([request], timeout=timeout)
        return result.completions[0], ""
    except CharterError as err:  # one item's failure is a status on that item, not a failed batch
        return None, str(err)


async def _attempt(
    client: InferenceClient,
    index: int,
    attempt: int,
    principle: Principle,
    few_shot: list[Message],
    conversation: list[Message],
    response: str,
    sampling: Sampling,
    deadline: float | None,
) -> Round:
    critique_request = prompts.render_turn("critique", principle)
    context = prompts.critique_messages(few_shot, conversation, response, critique_request)
    critique, error = await _step(client, context, sampling, deadline)
    base = functools.partial(
        Round, index=index, attempt=attempt, principle_id=principle.id, critique_request=critique_request
    )
    if critique is None:
        return base(critique="", critique_status=StepStatus.ERROR, error=error)
    status = classify(critique.text, critique_request, critique.finish_reason, echoes=(response,))
    if status is not StepStatus.OK:
        return base(
            critique=critique.text,
            critique_status=status,
            critique_tokens=critique.completion_tokens,
            prompt_tokens=critique.prompt_tokens,
        )
    revision_request = prompts.render_turn("revision", principle)
    revision, error = await _step(
        client, prompts.revision_messages(context, critique.text, revision_request), sampling, deadline
    )
    if revision is None:
        revision_status, text, tokens = StepStatus.ERROR, "", 0
    else:
        revision_status = classify(revision.text, revision_request, revision.finish_reason)
        text, tokens = revision.text, revision.completion_tokens
    return base(
        critique=critique.text,
        critique_status=status,
        revision_request=revision_request,
        revision=text,
        revision_status=revision_status,
        critique_tokens=critique.completion_tokens,
        revision_tokens=tokens,
        prompt_tokens=critique.prompt_tokens,
        error=error,
    )


async def critique_revise(
    client: InferenceClient,
    constitution: Constitution,
    conversation: Sequence[Message],
    response: str,
    *,
    rounds: int,
    sampling: Sampling,
    seed: int,
    item_key: str,
    principle_ids: Sequence[str] = (),
    few_shot_limit: int | None = None,
    deadline: float | None = None,
) -> Outcome:
    """`deadline`: when the caller stops waiting, in event-loop time (`loop.time()`); each engine call
    gets what is left of it. None: each call gets the engine's default deadline."""
    check_rounds(rounds)
    pool = eligible(constitution, principle_ids)
    few_shot = prompts.few_shot_messages(constitution, few_shot_limit)
    conversation = list(conversation)
    current, done = response, []
    for index in range(rounds):
        tried: list[str] = []
        for attempt in range(2):  # the first try and one retry with a different principle
            [principle] = sample(pool, 1, rng_for(seed, item_key, index, attempt), exclude=tried)
            tried.append(principle.id)
            step = await _attempt(
                client, index, attempt, principle, few_shot, conversation, current, sampling, deadline
            )
            done.append(step)
            if step.ok:
                current = step.revision
                break
    usable = [r for r in done if r.ok]
    if usable:
        status = StepStatus.OK
    else:
        last = done[-1]
        status = (
            last.revision_status
            if last.critique_status is StepStatus.OK and last.revision_status
            else last.critique_status
        )
    return Outcome(done, current, status, [r.principle_id for r in done])

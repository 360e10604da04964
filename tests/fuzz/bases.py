"""One request per RPC that the fuzzed server accepts (or refuses only for state: an unknown id, an
empty queue): the seeds the mutation strategy starts from. An RPC without one is fuzzed from random
messages alone."""

from __future__ import annotations

from typing import Any

from charter_proto.common.v1 import conversation_pb2, label_pb2
from charter_proto.critic.v1 import critic_pb2
from charter_proto.generator.v1 import generator_pb2
from charter_proto.judge.v1 import judge_pb2
from charter_proto.review.v1 import review_pb2
from charter_proto.trainer.v1 import trainer_pb2 as tp

from tests.support.hh import HH_DEV
from tests.support.trainer import run_spec

USER, ASSISTANT = conversation_pb2.ROLE_USER, conversation_pb2.ROLE_ASSISTANT


def conversation() -> conversation_pb2.Conversation:
    return conversation_pb2.Conversation(
        id="c-1",
        messages=[
            conversation_pb2.Message(role=USER, content="How do I pick a lock?"),
            conversation_pb2.Message(role=ASSISTANT, content="Why do you ask?"),
            conversation_pb2.Message(role=USER, content="I am locked out of my own house."),
        ],
    )


def label() -> label_pb2.PreferenceLabel:
    out = label_pb2.PreferenceLabel(
        id="lbl-fuzz-1", conversation=conversation(), response_a="Call a locksmith.",
        response_b="Use a bump key.", p_a=0.9, choice=label_pb2.CHOICE_A, confidence=0.8,
        swap_consistent=True, principle_ids=["violence"], status=label_pb2.LABEL_STATUS_OK,
    )  # fmt: skip
    out.constitution.id, out.constitution.version = "harmless", "1"
    out.constitution.digest = "sha256:" + "0" * 64
    out.judge.name, out.judge.engine = "fake", "fake"
    out.provenance.run_id = "fuzz"
    return out


def bases() -> dict[str, Any]:
    """Method name (`Service/Method`) -> a request it accepts."""
    generate = generator_pb2.GenerateRequest(prompts=[conversation()])
    generate.sampling.n, generate.sampling.max_tokens = 2, 16
    item = critic_pb2.CritiqueItem(conversation=conversation(), response="Call a locksmith.")
    critique = critic_pb2.CritiqueReviseRequest(item=item)
    critique.options.constitution_id = "harmless"
    critique_stream = critic_pb2.CritiqueReviseStreamRequest(items=[item, item])
    critique_stream.options.constitution_id = "harmless"
    pair = judge_pb2.ComparisonItem(
        conversation=conversation(), response_a="Call a locksmith.", response_b="No."
    )
    compare = judge_pb2.CompareRequest(items=[pair])
    compare.options.constitution_id = "harmless"
    compare_stream = judge_pb2.CompareStreamRequest(items=[pair, pair])
    compare_stream.options.constitution_id = "harmless"
    spec = run_spec(tp.ALGORITHM_REWARD_MODEL, "embedded", files=[str(HH_DEV)], max_steps=1, save_steps=1,
                    per_device_train_batch_size=2, max_length=64)  # fmt: skip
    return {
        "GeneratorService/Generate": generate,
        "GeneratorService/SwapModel": generator_pb2.SwapModelRequest(model="run:r-0000"),
        "GeneratorService/PushWeights": generator_pb2.PushWeightsRequest(name="ppo/step-1", data=b"\0" * 16),
        "CriticReviserService/CritiqueRevise": critique,
        "CriticReviserService/CritiqueReviseStream": critique_stream,
        "JudgeService/Compare": compare,
        "JudgeService/CompareStream": compare_stream,
        "ReviewService/Submit": review_pb2.SubmitRequest(labels=[label()], request_id="req-1"),
        "ReviewService/Claim": review_pb2.ClaimRequest(lease_seconds=60, constitution_id="harmless"),
        "ReviewService/Decide": review_pb2.DecideRequest(item_id="i-1", lease_id="l-1", comment="ok"),
        "ReviewService/Release": review_pb2.ReleaseRequest(item_id="i-1", lease_id="l-1"),
        "ReviewService/StreamLabels": review_pb2.StreamLabelsRequest(max_labels_per_message=10),
        "ReviewService/Stats": review_pb2.StatsRequest(constitution_id="harmless"),
        "TrainerService/StartRun": tp.StartRunRequest(spec=spec, idempotency_key="fuzz-1"),
        "TrainerService/WatchRun": tp.WatchRunRequest(run_id="r-0000", after_sequence=1),
        "TrainerService/GetRun": tp.GetRunRequest(run_id="r-0000"),
        "TrainerService/ListRuns": tp.ListRunsRequest(page_size=10),
        "TrainerService/CancelRun": tp.CancelRunRequest(run_id="r-0000", reason="fuzz"),
        "TrainerService/ResumeRun": tp.ResumeRunRequest(run_id="r-0000"),
        "TrainerService/ListRounds": tp.ListRoundsRequest(run_id="r-0000"),
    }

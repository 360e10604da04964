"""The judge through a real gRPC server on port 0 with the real embedded model (transformers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from charter.api import common as convert
from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import ServerSettings, load_settings
from charter.datasets.pairs import PairRow, read_pairs
from charter.inference.types import Message
from charter_proto.common.v1 import label_pb2
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc

from tests.support import CONSTITUTIONS
from tests.support.hh import HH_DEV

pytestmark = pytest.mark.integration


@pytest.fixture
async def stub(hf_engine) -> AsyncIterator[judge_pb2_grpc.JudgeServiceStub]:
    settings = load_settings(constitutions={"directory": CONSTITUTIONS})
    resources = Resources(settings, engine=hf_engine)
    server = CharterServer(
        ServerSettings(host="127.0.0.1", port=0, metrics_port=None),
        [SERVICES["judge"].registration_for(resources)],
    )
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield judge_pb2_grpc.JudgeServiceStub(channel)
    await server.stop(0)
    await resources.close()


def item(conversation: list[Message], a: str, b: str, cid: str = "") -> judge_pb2.ComparisonItem:
    return judge_pb2.ComparisonItem(
        conversation=convert.conversation_proto(conversation, cid), response_a=a, response_b=b
    )


def hh_pairs(n: int) -> list[PairRow]:
    return [p for p in read_pairs(HH_DEV, limit=n) if isinstance(p, PairRow)]


def hh_items(n: int) -> list[judge_pb2.ComparisonItem]:
    return [item(list(p.conversation), p.response_a, p.response_b) for p in hh_pairs(n)]


def judged_total() -> float:
    from prometheus_client import REGISTRY

    return sum(
        REGISTRY.get_sample_value("charter_judge_labels_total", {"status": st, "swap_consistent": sc}) or 0.0
        for st in ("ok", "tie")
        for sc in ("true", "false")
    )


async def test_compare_labels_real_pairs_with_full_provenance(stub) -> None:
    items = hh_items(3)
    before = judged_total()
    reply = await stub.Compare(
        judge_pb2.CompareRequest(
            items=items, options=judge_pb2.JudgeOptions(constitution_id="harmless", seed=3), request_id="r1"
        ),
        timeout=300,
    )
    assert len(reply.labels) == 3
    for label, it in zip(reply.labels, items, strict=True):
        assert label.status in (label_pb2.LABEL_STATUS_OK, label_pb2.LABEL_STATUS_TIE)
        assert label.response_a == it.response_a and label.response_b == it.response_b
        assert 0.0 < label.p_a < 1.0
        assert label.confidence == pytest.approx(abs(label.p_a - 0.5) * 2)
        assert len(label.scores) == 2 and {s.swapped for s in label.scores} == {False, True}
        debiased = (label.scores[0].p_first + 1 - label.scores[1].p_first) / 2
        assert label.p_a == pytest.approx(debiased)
        assert all(
            len(s.option_logprobs) == 2 and s.principle_id == label.principle_ids[0] for s in label.scores
        )
        assert label.choice == (label_pb2.CHOICE_A if label.p_a > 0.5 else label_pb2.CHOICE_B)
        assert label.judge.engine == "transformers" and label.judge.name
        assert label.constitution.id == "harmless" and label.constitution.digest.startswith("sha256:")
        assert label.provenance.request_id == "r1" and label.provenance.seed == 3
        assert label.id.startswith("lbl_")
    assert len({lbl.id for lbl in reply.labels}) == 3
    assert judged_total() == before + 3  # the Prometheus counters saw them


@pytest.mark.timeout(600)  # the real model: minutes on a slow 2-core CPU
async def test_swapping_a_and_b_gives_one_minus_p(stub) -> None:
    items = hh_items(4)
    swapped = [item(list(p.conversation), p.response_b, p.response_a) for p in hh_pairs(4)]
    options = judge_pb2.JudgeOptions(constitution_id="harmless", seed=11, principles_per_label=2)
    ab = await stub.Compare(judge_pb2.CompareRequest(items=items, options=options), timeout=300)
    ba = await stub.Compare(judge_pb2.CompareRequest(items=swapped, options=options), timeout=300)
    for x, y in zip(ab.labels, ba.labels, strict=True):
        assert list(x.principle_ids) == list(y.principle_ids) and len(x.principle_ids) == 2
        assert y.p_a == pytest.approx(1 - x.p_a, abs=1e-4)
        assert x.swap_consistent == y.swap_consistent


async def test_stream_returns_every_item_once(stub) -> None:
    items = hh_items(5)
    request = judge_pb2.CompareStreamRequest(
        items=items, options=judge_pb2.JudgeOptions(constitution_id="harmless", seed=1, single_order=True)
    )
    replies = [r async for r in stub.CompareStream(request, timeout=300)]
    assert sorted(r.item_index for r in replies) == list(range(5))
    for r in replies:
        assert r.label.response_a == items[r.item_index].response_a
        assert len(r.label.scores) == 1 and not r.label.swap_consistent


async def test_chain_of_thought_is_clamped_and_keeps_rationales(stub) -> None:
    request = judge_pb2.CompareRequest(
        items=hh_items(2),
        options=judge_pb2.JudgeOptions(
            constitution_id="harmless", seed=2, chain_of_thought=True, cot_clamp_low=0.45, cot_clamp_high=0.55
        ),
    )
    reply = await stub.Compare(request, timeout=600)
    for label in reply.labels:
        assert label.chain_of_thought
        assert 0.45 <= label.p_a <= 0.55
        assert all(s.rationale.strip() for s in label.scores)


async def test_too_long_item_is_invalid_input_and_the_rest_are_labelled(stub) -> None:
    items = [*hh_items(1), item([Message(role="user", content="word " * 3000)], "x", "y")]
    reply = await stub.Compare(
        judge_pb2.CompareRequest(
            items=items, options=judge_pb2.JudgeOptions(constitution_id="harmless", seed=0)
        ),
        timeout=300,
    )
    assert reply.labels[0].status in (label_pb2.LABEL_STATUS_OK, label_pb2.LABEL_STATUS_TIE)
    bad = reply.labels[1]
    assert bad.status == label_pb2.LABEL_STATUS_INVALID_INPUT
    assert "exceeds the model's context" in bad.status_detail
    assert bad.choice == label_pb2.CHOICE_UNSPECIFIED


@pytest.mark.parametrize(
    ("options", "items", "detail"),
    [
        (judge_pb2.JudgeOptions(), None, "options.constitution_id"),
        (judge_pb2.JudgeOptions(constitution_id="harmless"), [], "items: at least one item"),
        (
            judge_pb2.JudgeOptions(constitution_id="harmless", principles_per_label=17),
            None,
            "principles_per_label",
        ),
        (
            judge_pb2.JudgeOptions(constitution_id="harmless", principle_ids=["nope"]),
            None,
            "options.principle_ids",
        ),
        (judge_pb2.JudgeOptions(constitution_id="harmless", tie_margin=0.5), None, "options.tie_margin"),
        (
            judge_pb2.JudgeOptions(constitution_id="harmless", cot_clamp_low=0.6, cot_clamp_high=0.7),
            None,
            "options.cot_clamp_low",
        ),
        (judge_pb2.JudgeOptions(constitution_id="harmless"), "empty-b", "items[0].response_b"),
    ],
)
async def test_bad_requests_are_invalid_argument(stub, options, items, detail: str) -> None:
    if items is None:
        items = [item([Message(role="user", content="hi")], "a", "b")]
    elif items == "empty-b":
        items = [item([Message(role="user", content="hi")], "a", "  ")]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Compare(judge_pb2.CompareRequest(items=items, options=options), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in info.value.details()


async def test_unknown_constitution_is_not_found(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Compare(
            judge_pb2.CompareRequest(
                items=[item([Message(role="user", content="hi")], "a", "b")],
                options=judge_pb2.JudgeOptions(constitution_id="no-such"),
            ),
            timeout=60,
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_eval_command_runs_unchanged_against_an_openai_compatible_vllm_server(
    vllm_server: str, tmp_path
) -> None:
    """The evaluation a user runs on their own endpoint: same command, `--engine openai --openai-url`."""
    import json
    import subprocess

    from tests.support import ROOT, subprocess_env, tool

    out = tmp_path / "eval"
    result = subprocess.run(
        [tool("charter"), "eval", "judge", "--data", str(HH_DEV), "--limit", "4", "--engine", "openai",
         "--openai-url", vllm_server, "--model", "embedded", "--output", str(out)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["config"]["judge"]["engine"] == "openai"
    assert report["summary"]["labels"] == 4 and report["summary"]["scored"] == 4
    assert report["summary"]["position_pairs"] == 4


@pytest.mark.timeout(600)
async def test_calibration_moves_p_against_the_measured_slot_prior(stub) -> None:
    """A constructed biased case: the same reply in both slots, one order. Whatever the judge says here
    is position bias; calibration divides out the prior it measured and lands nearer to no preference."""
    reply = "I am not sure, but I will try to help you with that."
    same = [item([Message(role="user", content="Can you help me plan a birthday party?")], reply, reply + " ")]
    base = {"constitution_id": "harmless", "seed": 4, "single_order": True, "principles_per_label": 2}
    raw = await stub.Compare(
        judge_pb2.CompareRequest(items=same, options=judge_pb2.JudgeOptions(**base)), timeout=300
    )
    calibrated = await stub.Compare(
        judge_pb2.CompareRequest(
            items=same,
            options=judge_pb2.JudgeOptions(**base, method=label_pb2.JUDGE_METHOD_CALIBRATED),
        ),
        timeout=300,
    )
    [r], [c] = raw.labels, calibrated.labels
    assert c.method == label_pb2.JUDGE_METHOD_CALIBRATED and r.method == label_pb2.JUDGE_METHOD_MULTIPLE_CHOICE
    for plain, fixed in zip(r.scores, c.scores, strict=True):
        assert fixed.HasField("prior_first") and not plain.HasField("prior_first")
        prior = fixed.prior_first
        # the right direction: against the slot the prior favours
        assert (fixed.p_first - plain.p_first) * (0.5 - prior) > 0
    assert abs(c.p_a - 0.5) < abs(r.p_a - 0.5)


@pytest.mark.timeout(600)
async def test_contrastive_scoring_is_invariant_to_the_order_of_a_and_b(stub) -> None:
    items = hh_items(2)
    swapped = [item(list(p.conversation), p.response_b, p.response_a) for p in hh_pairs(2)]
    options = judge_pb2.JudgeOptions(
        constitution_id="harmless", seed=2, principles_per_label=2,
        method=label_pb2.JUDGE_METHOD_CONTRASTIVE, contrastive_beta=4.0,
    )  # fmt: skip
    ab = await stub.Compare(judge_pb2.CompareRequest(items=items, options=options), timeout=300)
    ba = await stub.Compare(judge_pb2.CompareRequest(items=swapped, options=options), timeout=300)
    for x, y in zip(ab.labels, ba.labels, strict=True):
        assert x.status == label_pb2.LABEL_STATUS_OK and x.method == label_pb2.JUDGE_METHOD_CONTRASTIVE
        assert x.contrastive_beta == 4.0 and len(x.scores) == 2
        assert all(len(s.option_logprobs) == 4 and not s.swapped for s in x.scores)
        assert y.p_a == pytest.approx(1 - x.p_a, abs=1e-4)
        assert x.p_a != pytest.approx(0.5, abs=1e-6)  # the responses differ: some margin


async def test_a_logit_scale_rescales_the_labels_probability(stub) -> None:
    from charter.judge.labels import rescale

    base = {"constitution_id": "harmless", "seed": 5, "single_order": True, "principles_per_label": 1}
    raw = await stub.Compare(
        judge_pb2.CompareRequest(items=hh_items(1), options=judge_pb2.JudgeOptions(**base)), timeout=300
    )
    scaled = await stub.Compare(
        judge_pb2.CompareRequest(items=hh_items(1), options=judge_pb2.JudgeOptions(**base, logit_scale=0.25)),
        timeout=300,
    )
    [r], [s] = raw.labels, scaled.labels
    assert not r.HasField("logit_scale") and s.logit_scale == 0.25
    assert s.p_a == pytest.approx(rescale(r.p_a, 0.25), abs=1e-6) and r.p_a != pytest.approx(0.5)
    assert abs(s.p_a - 0.5) < abs(r.p_a - 0.5) and s.id != r.id
    assert [x.p_first for x in s.scores] == [x.p_first for x in r.scores]  # the orders as scored

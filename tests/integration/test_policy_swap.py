"""Policy refresh: the generator service (real gRPC server in this process, the transformers engine)
swaps the model it serves while calls are in flight. Two tiny models tell their replies apart: one
with random weights writes text, the other (final norm zeroed, so every logit is 0) writes only
token 0, a special token, so its replies are empty. Every call succeeds and every reply carries the
version of the model that wrote it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import pytest
from charter.api.common import conversation_proto
from charter.app.catalog import SERVICES
from charter.app.local import local_services
from charter.client.generator import GeneratorClient
from charter.core.server import CharterServer
from charter.core.settings import (
    CharterSettings,
    GeneratorSettings,
    OpenAISettings,
    ServerSettings,
    load_settings,
)
from charter.inference.types import Message
from charter_proto.common.v1 import sampling_pb2
from charter_proto.generator.v1 import generator_pb2
from charter_proto.trainer.v1 import trainer_pb2 as tp
from charter_proto.trainer.v1 import trainer_pb2_grpc
from structlog.testing import capture_logs

from tests.support import tiny

pytestmark = pytest.mark.integration


def silent_lm(folder: Path, embedded_model: Path) -> Path:
    """A tiny LM whose final norm is zero: all logits are 0, greedy decoding writes token 0 forever."""
    import torch
    from transformers import LlamaForCausalLM

    tok = tiny.tokenizer(embedded_model)
    assert tok.convert_ids_to_tokens(0) in tok.all_special_tokens  # decoded without special tokens: ""
    model = LlamaForCausalLM(tiny.llama_config(tok, tie_word_embeddings=True))
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("policies")
    return tiny.save_tiny_lm(root / "a", embedded_model, seed=0), silent_lm(root / "b", embedded_model)


def settings_for(model: Path, tmp: Path) -> CharterSettings:
    return load_settings(
        inference={"engine": "transformers", "model": str(model), "dtype": "float32", "threads": 1,
                   "max_model_len": 512},
        trainer={"database_url": f"sqlite:///{tmp / 'runs.db'}"},
    )  # fmt: skip


def request(i: int) -> generator_pb2.GenerateRequest:
    prompt = conversation_proto([Message(role="user", content=f"Say something, number {i}.")], f"p{i}")
    return generator_pb2.GenerateRequest(prompts=[prompt], sampling=sampling_pb2.SamplingParams(max_tokens=8))


async def eventually(condition, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_generator_swaps_its_model_under_load(models: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = models
    loop = asyncio.get_running_loop()
    async with (
        local_services(settings_for(a, tmp_path), ["generator"]) as address,
        GeneratorClient(address, timeout=60) as client,
    ):
        [first] = await client.generate(request(0))
        version_a = first.model.policy_version
        assert version_a.startswith(f"{a}@sha256:") and first.model.revision.startswith("sha256:")
        assert first.completion.text != ""

        stop = asyncio.Event()
        done: list[tuple[float, float, str, str]] = []  # started, ended, policy version, text

        async def caller(k: int) -> None:
            i = 0
            while not stop.is_set():
                started = loop.time()
                replies = await client.generate(request(100 * k + i))
                ended = loop.time()
                done.extend((started, ended, r.model.policy_version, r.completion.text) for r in replies)
                i += 1

        callers = [asyncio.create_task(caller(k)) for k in range(4)]
        await eventually(lambda: len(done) >= 8)
        swap_started = loop.time()
        swapped = await client.swap_model(str(b))
        swap_ended = loop.time()
        await eventually(lambda: sum(1 for d in done if d[0] > swap_ended) >= 8)
        stop.set()
        await asyncio.gather(*callers)  # a failed call raises here

    version_b = swapped.model.policy_version
    assert swapped.previous.policy_version == version_a and swapped.model.name == str(b)
    assert version_b.startswith(f"{b}@sha256:") and version_b != version_a
    assert swapped.model.revision.startswith("sha256:") and swapped.model.revision != first.model.revision
    assert {version for _, _, version, _ in done} == {version_a, version_b}
    for _, _, version, text in done:  # each reply tagged with the model that wrote it
        assert (version == version_b) == (text == ""), (version, text)
    assert all(version == version_b for started, _, version, _ in done if started > swap_ended)
    assert all(version == version_a for _, ended, version, _ in done if ended < swap_started)
    # calls kept running on the old model while the new one loaded, none was dropped
    assert any(version == version_a and ended > swap_started for _, ended, version, _ in done)


async def test_a_failed_swap_keeps_the_old_model_serving(models: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = models
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"  # a config and no weights
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    expected = {
        "": grpc.StatusCode.INVALID_ARGUMENT,
        str(tmp_path / "missing"): grpc.StatusCode.NOT_FOUND,
        str(empty): grpc.StatusCode.INVALID_ARGUMENT,
        str(broken): grpc.StatusCode.FAILED_PRECONDITION,
        "run:no-such-run": grpc.StatusCode.NOT_FOUND,  # resolved through the local run store
    }
    async with (
        local_services(settings_for(a, tmp_path), ["generator"]) as address,
        GeneratorClient(address, timeout=60) as client,
    ):
        [before] = await client.generate(request(0))
        for model, code in expected.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.swap_model(model)
            assert caught.value.code() is code, (model, caught.value.details())
        [after] = await client.generate(request(0))
    assert after.model.policy_version == before.model.policy_version
    assert after.completion.text == before.completion.text != ""


async def test_a_generator_on_an_openai_server_refuses_to_swap(
    models: tuple[Path, Path], embedded_model: Path, tmp_path: Path
) -> None:
    from charter.inference.openai_engine import OpenAIEngine

    engine = OpenAIEngine(
        OpenAISettings(base_url="http://127.0.0.1:9/v1"), model="served", tokenizer=str(embedded_model)
    )
    try:
        async with (
            local_services(settings_for(models[0], tmp_path), ["generator"], engine=engine) as address,
            GeneratorClient(address, timeout=60) as client,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.swap_model(str(models[1]))
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "its server owns" in caught.value.details()
    finally:
        await engine.close()


async def test_pipeline_records_carry_the_policy_version(
    models: tuple[Path, Path], embedded_model: Path, tmp_path: Path
) -> None:
    """Best-of-N against the generator: every record's generator provenance names the policy version."""
    from charter.pipelines import best_of_n
    from charter.pipelines.spec import BestOfNSpec

    a, _ = models
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Prompt {i}"}) + "\n" for i in range(2)))
    reward_model = tiny.save_tiny_reward_model(tmp_path / "rm", embedded_model, seed=3)
    async with local_services(settings_for(a, tmp_path), ["generator"]) as address:
        async with GeneratorClient(address, timeout=60) as client:
            [reply] = await client.generate(request(0))
        spec = BestOfNSpec.model_validate({
            "kind": "best-of-n", "name": "versions", "source": {"path": str(source)}, "n": 2, "seed": 7,
            "generation": {"temperature": 1.0, "max_tokens": 8}, "output": str(tmp_path / "out"),
            "scorer": {"reward_model": str(reward_model)},
            "services": {"mode": "remote", "generator": address, "retries": 0},
        })  # fmt: skip
        summary = await best_of_n.run(spec, load_settings())
    assert summary.samples == 4
    records = [json.loads(line) for line in (spec.output / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert {r["provenance"]["model"]["policy_version"] for r in records} == {reply.model.policy_version}


class Runs(trainer_pb2_grpc.TrainerServiceServicer):
    """A trainer service that lists the runs a test puts in `runs` (newest first)."""

    def __init__(self) -> None:
        self.runs: list[tp.Run] = []
        self.polls = 0

    async def ListRuns(self, request: tp.ListRunsRequest, context: object) -> tp.ListRunsResponse:
        self.polls += 1
        runs = [r for r in self.runs if not request.states or r.state in request.states]
        return tp.ListRunsResponse(runs=runs[: request.page_size or 100])


def trained(root: Path, run_id: str, model: Path | None, *, name: str = "policy",
            algorithm: int = tp.Algorithm.ALGORITHM_DPO) -> tp.Run:  # fmt: skip
    """A succeeded run whose final model is a copy of `model` (None: no model folder at all)."""
    if model is not None:
        shutil.copytree(model, root / run_id / "model")
    return tp.Run(id=run_id, spec=tp.RunSpec(name=name, algorithm=algorithm),
                  state=tp.RunState.RUN_STATE_SUCCEEDED, output_dir=str(root / run_id))  # fmt: skip


async def test_a_following_generator_serves_each_newer_run_of_its_name(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = models
    runs = Runs()
    trainer = CharterServer(ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0),
                            [SERVICES["trainer"].registration(runs)])  # fmt: skip
    port = await trainer.start()
    settings = settings_for(a, tmp_path).model_copy(
        update={"generator": GeneratorSettings(follow_run_name="policy", trainer_address=f"127.0.0.1:{port}",
                                               follow_poll_seconds=0.05)}  # fmt: skip
    )

    async def served(client: GeneratorClient, prefix: str) -> generator_pb2.GenerateResponse:
        for _ in range(600):
            [reply] = await client.generate(request(0))
            if reply.model.policy_version.startswith(prefix):
                return reply
            await asyncio.sleep(0.05)
        raise AssertionError(f"never served {prefix}; last {reply.model.policy_version}")

    try:
        with capture_logs() as logs:
            async with (
                local_services(settings, ["generator"]) as address,
                GeneratorClient(address, timeout=60) as client,
            ):
                first = await served(client, f"{a}@")
                runs.runs = [trained(tmp_path, "rm-1", a, algorithm=tp.Algorithm.ALGORITHM_REWARD_MODEL),
                             trained(tmp_path, "other-1", a, name="other")]  # fmt: skip
                polls = runs.polls
                await eventually(lambda: runs.polls >= polls + 3)
                [still] = await client.generate(request(0))
                assert still.model.policy_version == first.model.policy_version  # not its runs

                runs.runs.insert(0, trained(tmp_path, "r1", b))
                r1 = await served(client, "run:r1@")
                assert r1.completion.text == "" and r1.model.name == "run:r1"

                runs.runs.insert(0, trained(tmp_path, "r2", a, algorithm=tp.Algorithm.ALGORITHM_GRPO))
                r2 = await served(client, "run:r2@")
                assert r2.completion.text == first.completion.text != ""  # the same weights as a
                assert r2.model.revision == first.model.revision

                runs.runs.insert(0, trained(tmp_path, "r3", None))  # succeeded, and its model is gone
                polls = runs.polls
                await eventually(lambda: runs.polls >= polls + 5)
                [after] = await client.generate(request(0))
                assert after.model.policy_version == r2.model.policy_version
    finally:
        await trainer.stop(0)
    failures = [e for e in logs if e["event"] == "generator.follow.failed"]
    assert len(failures) == 1 and "r3" in failures[0]["error"]  # a bad model is not tried again
    swaps = [e["run_id"] for e in logs if e["event"] == "generator.follow.swapped"]
    assert swaps == ["r1", "r2"]


async def test_the_shared_engine_is_closed_on_a_swap_only_when_no_other_service_uses_it(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    from charter.app.catalog import Resources

    shared = Resources(settings_for(models[0], tmp_path))
    engine = shared.engine()
    assert shared.engine() is engine  # the generator's and another service's
    assert not await shared.release_engine(engine) and not engine._closed  # the other still uses it
    await shared.close()
    assert engine._closed

    alone = Resources(settings_for(models[0], tmp_path))
    only = alone.engine()
    assert await alone.release_engine(only) and only._closed  # the generator was its one user
    await alone.close()

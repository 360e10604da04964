"""Swapping the served policy while calls are in flight (`inference.policy.ServedPolicy`), on scripted
engines whose model calls can be held: the drain, the version each call sees, failed loads, and the
engines that cannot swap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from charter.core.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from charter.inference import ChatRequest, Message, ModelInfo, Sampling
from charter.inference.policy import ServedPolicy, policy_version
from structlog.testing import capture_logs

from tests.support.fake_engine import FakeEngine

REQUEST = ChatRequest(messages=(Message(role="user", content="hi"),), sampling=Sampling(max_tokens=4))


def model_folder(root: Path, name: str, weights: bytes) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


class InPlaceEngine(FakeEngine):
    swap_mode = "in_place"


class Builds:
    """The policy's `build`: a scripted engine on the folder, or a failure for the folders named in
    `failing`."""

    def __init__(self, engine_type: type[FakeEngine] = FakeEngine) -> None:
        self.engine_type = engine_type
        self.built: list[FakeEngine] = []
        self.failing = {"bad"}

    def __call__(self, folder: str, name: str) -> FakeEngine:
        if Path(folder).name in self.failing:
            raise ValueError("the weights do not match the config")
        engine = self.engine_type(name=name, path=folder)
        self.built.append(engine)
        return engine


class Retired:
    """The policy's `retire`: closes the engine it is given back (its owner's only user was the policy)."""

    def __init__(self) -> None:
        self.engines: list[FakeEngine] = []

    async def __call__(self, engine: FakeEngine) -> bool:
        self.engines.append(engine)
        await engine.close()
        return True


async def call(policy: ServedPolicy, timeout: float | None = None) -> tuple[str, str]:
    """One call under a lease: (its version id, the engine's name that answered)."""
    async with policy.lease(timeout) as (engine, version):
        [result] = await engine.chat([REQUEST], timeout=timeout)
        assert result.completions[0].text == "echo: hi"
        return version.id, engine.model.name


async def eventually(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_swap_drains_calls_in_flight_and_holds_new_ones(tmp_path: Path) -> None:
    a = model_folder(tmp_path, "a", b"weights of a")
    b = model_folder(tmp_path, "b", b"weights of b")
    old = FakeEngine(name="a", path=str(a))
    old.gate.clear()  # the old model's calls are held until the gate opens
    builds, retired = Builds(), Retired()
    policy = ServedPolicy(old, build=builds, retire=retired)
    version_a = policy.version
    assert version_a.id.startswith("a@sha256:") and version_a.digest == policy_version(old.model).digest

    in_flight = asyncio.create_task(call(policy))
    await eventually(lambda: policy.in_flight == 1)
    with capture_logs() as logs:
        swap = asyncio.create_task(policy.swap(str(b), "run:b"))
        await eventually(lambda: any(e["event"] == "generator.policy.draining" for e in logs))
    assert [e["in_flight"] for e in logs if e["event"] == "generator.policy.draining"] == [1]
    waiting = asyncio.create_task(call(policy))
    with pytest.raises(DeadlineExceeded, match="swapping"):
        await call(policy, timeout=0.05)
    await asyncio.sleep(0.1)
    assert not swap.done() and not waiting.done() and not in_flight.done()
    assert [e.calls for e in builds.built] == [[]]  # the new model is loaded, and not yet called

    old.gate.set()
    assert await in_flight == (version_a.id, "a")  # finished on the old model, under its version
    outcome = await swap
    assert await waiting == (outcome.version.id, "run:b")  # held, then run on the new model
    assert outcome.previous == version_a and outcome.version.id.startswith("run:b@sha256:")
    assert outcome.version.digest != version_a.digest and policy.version == outcome.version
    assert retired.engines == [old]
    assert builds.built[0].calls == [1]
    await policy.close()


async def test_a_model_that_fails_to_load_leaves_the_old_one_serving(tmp_path: Path) -> None:
    a = model_folder(tmp_path, "a", b"weights of a")
    bad = model_folder(tmp_path, "bad", b"garbage")
    builds, retired = Builds(), Retired()
    policy = ServedPolicy(FakeEngine(name="a", path=str(a)), build=builds, retire=retired)
    before = policy.version
    with pytest.raises(FailedPrecondition, match="could not be loaded: the weights do not match"):
        await policy.swap(str(bad), "bad")
    with pytest.raises(NotFound, match="does not exist"):
        await policy.swap(str(tmp_path / "missing"), "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="no config.json"):
        await policy.swap(str(tmp_path / "empty"), "empty")
    assert policy.version == before and not retired.engines
    assert await call(policy) == (before.id, "a")
    await policy.engine.close()


async def test_in_place_the_old_model_is_shut_down_first_and_restarted_when_the_new_fails(
    tmp_path: Path,
) -> None:
    a = model_folder(tmp_path, "a", b"weights of a")
    bad = model_folder(tmp_path, "bad", b"garbage")
    b = model_folder(tmp_path, "b", b"weights of b")
    old = InPlaceEngine(name="a", path=str(a))
    builds, retired = Builds(InPlaceEngine), Retired()
    policy = ServedPolicy(old, build=builds, retire=retired)
    before = policy.version
    with pytest.raises(FailedPrecondition, match="could not be loaded"):
        await policy.swap(str(bad), "bad")
    assert retired.engines == [old]  # shut down before the new model was loaded
    assert policy.engine is builds.built[0] and policy.version == before  # the old model, started again
    assert await call(policy) == (before.id, "a")

    outcome = await policy.swap(str(b), "b")
    assert outcome.paused_seconds >= 0 and policy.engine is builds.built[1]
    assert builds.built[0]._closed  # the restarted engine was the policy's own: closed on the swap
    assert await call(policy) == (outcome.version.id, "b")
    await policy.close()
    assert builds.built[1]._closed


async def test_when_the_old_model_does_not_restart_calls_are_unavailable_until_a_swap_succeeds(
    tmp_path: Path,
) -> None:
    a = model_folder(tmp_path, "a", b"weights of a")
    bad = model_folder(tmp_path, "bad", b"garbage")
    b = model_folder(tmp_path, "b", b"weights of b")
    builds = Builds(InPlaceEngine)
    policy = ServedPolicy(InPlaceEngine(name="a", path=str(a)), build=builds, retire=Retired())
    builds.failing.add("a")  # the old model's folder went bad too
    with pytest.raises(FailedPrecondition, match="could not be loaded"):
        await policy.swap(str(bad), "bad")
    with pytest.raises(Unavailable, match="has no model"):
        await call(policy)
    outcome = await policy.swap(str(b), "b")
    assert await call(policy) == (outcome.version.id, "b")
    await policy.close()


async def test_a_drain_that_takes_too_long_gives_up_and_keeps_the_old_model(tmp_path: Path) -> None:
    a = model_folder(tmp_path, "a", b"weights of a")
    b = model_folder(tmp_path, "b", b"weights of b")
    old = FakeEngine(name="a", path=str(a))
    old.gate.clear()
    builds = Builds()
    policy = ServedPolicy(old, build=builds, drain_seconds=0.1)
    in_flight = asyncio.create_task(call(policy))
    await eventually(lambda: policy.in_flight == 1)
    with pytest.raises(Unavailable, match="1 calls were still in flight"):
        await policy.swap(str(b), "b")
    assert builds.built[0]._closed  # the new model was loaded, then let go
    old.gate.set()
    assert await in_flight == (policy.version.id, "a")
    assert await call(policy, timeout=1) == (policy.version.id, "a")  # the gate is open again
    await old.close()


async def test_an_engine_whose_server_owns_the_model_refuses_to_swap(tmp_path: Path) -> None:
    class Remote:
        model = ModelInfo("served", "openai", "http://127.0.0.1:8000/v1", 2048)

    policy = ServedPolicy(Remote(), build=Builds())  # type: ignore[arg-type]
    assert policy.version.id == "served" and policy.version.digest == ""
    with pytest.raises(FailedPrecondition, match="the openai engine serves a model its server owns"):
        await policy.swap(str(model_folder(tmp_path, "b", b"b")), "b")

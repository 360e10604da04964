"""The policy the generator serves, and swapping it for another model while serving.

A `PolicyVersion` is the served weights' identity: the name the model was asked for by (the
configured model, a folder, `run:<id>`, a continuous run's round `run:<id>@<n>`) and the sha256 of its
folder's files (`core.files.folder_digest`), so a model retrained into the same folder is a new
version. The generator tags every response with it.

`ServedPolicy` holds the engine. Every call takes a lease (`async with policy.lease() as (engine,
version)`) for as long as it uses the engine; `swap` closes the gate (new calls wait), waits until the
leases in flight are returned (the drain), replaces the engine and opens the gate again, so no call
is dropped and every call runs on one model from start to end. How the engine is replaced depends on
the engine (`swap_mode`):

- `beside` (transformers, and any other `LocalEngine`): the new model is loaded while the old one
  still serves; only the drain and the switch pause new calls. A model that fails to load changes
  nothing.
- `in_place` (vLLM in-process): an engine sizes its KV cache to most of the accelerator's memory, so
  two cannot live side by side: drain, shut the old engine down, start the new one. A model that fails
  to load is replaced by the old model, started again.
- `remote` (the OpenAI-compatible engine, or anything else): the server at the other end owns the
  model; a swap is refused (FAILED_PRECONDITION).

`push` loads new weights for the same model into the served engine in place (a trainer's policy after
each update, `inference.weights`): checked against the served checkpoint's names and shapes first,
then the same drain, then the engine copies them in between two of its calls; the version becomes
`<name>@sha256:<digest of the pushed files>` (its `path` stays the model folder it was loaded from).

Example:
    policy = ServedPolicy(engine, build=lambda folder, name: build_engine(...))
    async with policy.lease(timeout=30) as (engine, version):
        results = await engine.chat(requests)
    outcome = await policy.swap("/runs/42/model", "run:42")
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from charter.core.errors import (
    CharterError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from charter.core.files import folder_digest
from charter.inference.models import is_model_folder
from charter.inference.types import InferenceClient, ModelInfo
from charter.inference.weights import check_push

log = structlog.get_logger("charter.inference.policy")

SwapMode = Literal["beside", "in_place", "remote"]
Builder = Callable[[str, str], InferenceClient]
"""(model folder, name) -> a started engine serving it; blocking (it runs on a worker thread)."""
Retire = Callable[[InferenceClient], Awaitable[bool]]
"""Offers the engine the policy was given back to its owner once it is swapped out: True when the owner
closed it (no other service uses it); False when it stays loaded (and still the policy's, should an
`in_place` load fail)."""

_DIGEST_CHARS = len("sha256:") + 16


@dataclass(frozen=True)
class PolicyVersion:
    id: str
    """`<name>@sha256:<first 16 hex digits>`; the name alone when there is no local folder (remote)."""
    name: str
    path: str
    digest: str
    """`sha256:<hex>` over the folder's files; empty for a remote model."""


def policy_version(info: ModelInfo, digest: str | None = None) -> PolicyVersion:
    """The version of the model `info` describes (`digest`: its folder's, when already computed)."""
    folder = Path(info.path)
    if digest is None:
        digest = folder_digest(folder) if folder.is_dir() else ""
    ident = f"{info.name}@{digest[:_DIGEST_CHARS]}" if digest else info.name
    return PolicyVersion(id=ident, name=info.name, path=info.path, digest=digest)


def swap_mode(engine: InferenceClient) -> SwapMode:
    mode = getattr(engine, "swap_mode", "remote")
    return "beside" if mode == "beside" else "in_place" if mode == "in_place" else "remote"


@dataclass(frozen=True)
class SwapOutcome:
    version: PolicyVersion
    previous: PolicyVersion
    engine: InferenceClient
    previous_engine: InferenceClient
    paused_seconds: float
    """How long new calls were held: the drain, and for `in_place` the load too."""
    tensors: int = 0
    """Tensors loaded (a push)."""


class ServedPolicy:
    """The generator's engine and the version it serves, swappable while calls are in flight.

    `build`: starts an engine on a model folder (used by `swap`); `retire`: offers the engine given
    here back to its owner once it is swapped out (None: it stays loaded); the engines `swap` built are
    the policy's to close. `shared`: whether an engine also serves other services in this process
    (pushed weights would change them too, so `push` is refused). `drain_seconds`: how long a swap
    waits for calls in flight before it gives up. A swap, once begun, runs to its end even when its
    caller goes away."""

    def __init__(
        self,
        engine: InferenceClient,
        *,
        build: Builder,
        retire: Retire | None = None,
        drain_seconds: float = 600.0,
        version: PolicyVersion | None = None,
        shared: Callable[[InferenceClient], bool] | None = None,
    ) -> None:
        self._engine = engine
        self._version = version or policy_version(engine.model)
        self._build = build
        self._retire = retire
        self._given = engine
        self._shared = shared
        self.drain_seconds = drain_seconds
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._swapping = asyncio.Lock()
        self._broken: str | None = None

    @property
    def engine(self) -> InferenceClient:
        return self._engine

    @property
    def version(self) -> PolicyVersion:
        return self._version

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.asynccontextmanager
    async def lease(
        self, timeout: float | None = None
    ) -> AsyncIterator[tuple[InferenceClient, PolicyVersion]]:
        """The engine and its version, held until the block ends (a swap waits for it). While a swap
        is under way this waits, at most `timeout` seconds (then DEADLINE_EXCEEDED)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._open.is_set():  # checked again on waking: another swap may have begun
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(self._open.wait(), remaining)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the generator was still swapping its model after {timeout:.1f} s; retry"
                ) from None
        if self._broken is not None:
            raise Unavailable(self._broken)
        # no await between the gate check and the count: the swap sees this call in flight
        self._in_flight += 1
        self._idle.clear()
        try:
            yield self._engine, self._version
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def swap(self, folder: str, name: str) -> SwapOutcome:
        """Serve the model in `folder` as `name` from now on (one swap at a time)."""
        task = asyncio.ensure_future(self._swap(folder, name))
        task.add_done_callback(_log_orphan)
        return await asyncio.shield(task)

    async def _swap(self, folder: str, name: str) -> SwapOutcome:
        async with self._swapping:
            mode = swap_mode(self._engine)
            if mode == "remote":
                raise FailedPrecondition(
                    f"the {self._engine.model.engine} engine serves a model its server owns "
                    f"({self._engine.model.path}); swap the model there, or serve an in-process engine"
                )
            path = Path(folder)
            try:
                exists, model_folder = path.exists(), is_model_folder(path)
            except OSError as err:  # a name too long for the file system (ENAMETOOLONG), no permission
                raise InvalidArgument(
                    f"model: {folder} cannot be read as a folder ({err.strerror})",
                    field="model",
                    value=folder,
                ) from None
            if not exists:
                raise NotFound(f"model: {folder} does not exist", field="model", value=folder)
            if not model_folder:
                raise InvalidArgument(
                    f"model: {folder} is not a model folder (it has no config.json)",
                    field="model",
                    value=folder,
                )
            digest = await asyncio.to_thread(folder_digest, path)
            if mode == "beside":
                return await self._swap_beside(folder, name, digest)
            return await self._swap_in_place(folder, name, digest)

    async def push(self, folder: str, name: str, *, remove: bool = False) -> SwapOutcome:
        """Load the weights in `folder` (`inference.weights`) into the served engine in place and serve
        them as `name` from now on; `remove`: delete the folder once done, whatever happens. Calls in
        flight finish on the old weights first. Like a swap, it runs to its end when its caller goes."""
        task = asyncio.ensure_future(self._push(folder, name))
        task.add_done_callback(_log_orphan)
        if remove:
            task.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
        return await asyncio.shield(task)

    async def _push(self, folder: str, name: str) -> SwapOutcome:
        async with self._swapping:
            engine, previous = self._engine, self._version
            load = getattr(engine, "load_weights", None)
            if swap_mode(engine) == "remote" or load is None:
                raise FailedPrecondition(
                    f"the {engine.model.engine} engine cannot load pushed weights; serve an in-process engine"
                )
            if self._shared is not None and self._shared(engine):
                raise FailedPrecondition(
                    "the generator shares its engine with other services in this process, which pushed "
                    "weights would change too; run the generator in its own process"
                )
            if self._broken is not None:
                raise Unavailable(self._broken)
            tensors = await asyncio.to_thread(check_push, folder, previous.path)
            digest = await asyncio.to_thread(folder_digest, Path(folder))
            started = await self._drain()
            try:
                loaded = await load(folder)
            except CharterError as err:  # part of the weights may be in: serve nothing rather than a mix
                self._broken = (
                    f"the generator's weights are incomplete: a push failed ({err.message}); swap a model in"
                )
                log.error("generator.policy.push_failed", name=name, error=err.message)
                raise
            else:
                ident = f"{name}@{digest[:_DIGEST_CHARS]}"
                self._version = PolicyVersion(id=ident, name=name, path=previous.path, digest=digest)
            finally:
                self._open.set()
            log.info("generator.policy.pushed", version=self._version.id, tensors=loaded, checked=tensors)
            return SwapOutcome(self._version, previous, engine, engine, time.monotonic() - started, loaded)

    async def _swap_beside(self, folder: str, name: str, digest: str) -> SwapOutcome:
        new = await self._start(folder, name)
        try:
            started = await self._drain()
        except BaseException:
            await new.close()
            raise
        old, previous = self._engine, self._version
        self._engine, self._version, self._broken = new, policy_version(new.model, digest), None
        paused = time.monotonic() - started
        self._open.set()
        await self._let_go(old)
        return SwapOutcome(self._version, previous, new, old, paused)

    async def _swap_in_place(self, folder: str, name: str, digest: str) -> SwapOutcome:
        started = await self._drain()
        old, previous = self._engine, self._version
        try:
            closed = await self._let_go(old)
            try:
                new = await self._start(folder, name)
            except CharterError:
                if closed:
                    await self._restore(previous)
                raise
            self._engine, self._version, self._broken = new, policy_version(new.model, digest), None
            return SwapOutcome(self._version, previous, new, old, time.monotonic() - started)
        finally:
            self._open.set()

    async def _restore(self, previous: PolicyVersion) -> None:
        """The old model again, after the new one failed to load in its place."""
        try:
            self._engine = await self._start(previous.path, previous.name)
        except CharterError as err:
            self._broken = (
                f"the generator has no model: {previous.id} did not restart ({err.message}); swap one in"
            )
            log.error("generator.policy.restore_failed", version=previous.id, error=err.message)

    async def _start(self, folder: str, name: str) -> InferenceClient:
        try:
            return await asyncio.to_thread(self._build, folder, name)
        except CharterError:
            raise
        except Exception as err:  # a bad folder: weights that do not load, a config transformers refuses
            log.exception("generator.policy.load_failed", model=folder)
            raise FailedPrecondition(f"model: {folder} could not be loaded: {err}", field="model") from None

    async def _drain(self) -> float:
        """Close the gate and wait until no call is in flight; when it started (monotonic). On a
        timeout (or cancellation) the gate opens again and the old model keeps serving."""
        started = time.monotonic()
        self._open.clear()
        log.info("generator.policy.draining", in_flight=self._in_flight, version=self._version.id)
        try:
            await asyncio.wait_for(self._idle.wait(), self.drain_seconds)
        except TimeoutError:
            self._open.set()
            raise Unavailable(
                f"{self._in_flight} calls were still in flight after {self.drain_seconds:.0f} s "
                f"(generator.swap_drain_seconds); {self._version.id} keeps serving; retry the swap"
            ) from None
        except BaseException:
            self._open.set()
            raise
        return started

    async def _let_go(self, engine: InferenceClient) -> bool:
        """Close `engine` when the policy built it, else offer it to `retire`; True when it is closed."""
        if engine is self._given:
            return await self._retire(engine) if self._retire is not None else False
        await engine.close()
        return True

    async def close(self) -> None:
        """Close the engine the policy serves, if it built it (the first one belongs to its owner)."""
        if self._engine is not self._given:
            await self._engine.close()


def _log_orphan(task: asyncio.Task[SwapOutcome]) -> None:
    """A swap whose caller went away still ends: its failure is logged here (and so retrieved)."""
    if not task.cancelled() and (err := task.exception()) is not None:
        log.info("generator.policy.swap_failed", error=str(err))

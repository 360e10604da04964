"""The TrainerService over gRPC: runs started, followed, resumed and cancelled through an executor
(a local subprocess or a Kubernetes Job), their state and events kept in the run store.

A run's life: StartRun checks the spec (constructing the TRL/PPO config), records the run PENDING,
launches a worker (attempt 1) and marks it RUNNING; a follower task reads the worker's event lines
into the store (metrics, checkpoints, data range, logs) and, when the worker ends, marks the run
SUCCEEDED or FAILED with the reason. ResumeRun launches attempt n + 1 with `--resume`, which
continues from the last checkpoint on the cached data. When the service restarts it re-adopts every
active run: a worker still running is followed from where the store left off (`events_seen`), one
that vanished while the service was down is resumed (`trainer.auto_resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
from charter_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from grpc import aio

from charter.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from charter.core.settings import CharterSettings, TrainerSettings
from charter.review.auth import Authenticator, bearer
from charter.trainer import events
from charter.trainer.executor import MODEL_DIR, Executor, Launch, LocalExecutor
from charter.trainer.spec import ALGORITHMS, check
from charter.trainer.store import TERMINAL, RunStore

log = structlog.get_logger("charter.trainer")
T = TypeVar("T")
_STATE = trainer_pb2.RunState
_EXECUTORS = {trainer_pb2.EXECUTOR_LOCAL: "local", trainer_pb2.EXECUTOR_KUBERNETES: "kubernetes"}


def build_executor(settings: TrainerSettings) -> Executor:
    if settings.executor == "kubernetes":
        from charter.trainer.kubernetes import JobOptions, KubernetesExecutor

        k = settings.kubernetes
        if not k.image:
            raise InvalidArgument(
                "trainer.kubernetes.image: the Kubernetes executor needs the trainer image (pinned tag)",
                field="trainer.kubernetes.image",
            )
        options = JobOptions(**k.model_dump())
        try:
            return KubernetesExecutor(options, poll_seconds=settings.poll_seconds * 4)
        except Exception as err:  # no in-cluster service account and no kubeconfig
            raise FailedPrecondition(
                f"trainer.executor: kubernetes, but no cluster credentials were found "
                f"(in-cluster service account or kubeconfig): {err}"
            ) from None
    env = {}
    if settings.review_token.get_secret_value():
        env["CHARTER_REVIEW_TOKEN"] = settings.review_token.get_secret_value()
    if settings.review_token_file is not None:
        env["CHARTER_REVIEW_TOKEN_FILE"] = str(settings.review_token_file)
    return LocalExecutor(settings.runs_dir, threads=settings.worker_threads, env=env)


def _apply(run: trainer_pb2.Run, event: dict[str, Any]) -> list[Message]:
    """Fold one worker event into the run; the store events that record it."""
    kind = event["type"]
    if kind == "metrics":
        values = events.finite(event.get("values", {}))
        run.step = max(run.step, int(event.get("step", 0)))
        run.last_metrics.update(values)
        return [trainer_pb2.MetricsEvent(step=int(event.get("step", 0)), values=values)]
    if kind == "checkpoint":
        run.last_checkpoint = str(event.get("path", ""))
        return [trainer_pb2.CheckpointEvent(step=int(event.get("step", 0)), path=run.last_checkpoint)]
    if kind == "progress":
        run.total_steps = int(event.get("total_steps", 0))
        return []
    if kind == "data":
        run.cursor_start.sequence = int(event.get("cursor_start", 0))
        run.cursor_end.sequence = int(event.get("cursor_end", 0))
        run.rows = int(event.get("rows", 0))
        return [
            trainer_pb2.DataEvent(
                cursor_start=run.cursor_start, cursor_end=run.cursor_end, rows=run.rows,
                labels_read=int(event.get("labels_read", 0)),
                skipped={str(k): int(v) for k, v in (event.get("skipped") or {}).items()},
            )
        ]  # fmt: skip
    if kind == "finished":
        run.output_dir = str(event.get("output_dir", ""))
        return [trainer_pb2.LogEvent(level="info", message=f"model written to {run.output_dir}")]
    level = "error" if kind == "error" else str(event.get("level", "info"))
    return [trainer_pb2.LogEvent(level=level, message=str(event.get("message", "")))]


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, store: RunStore, executor: Executor, settings: TrainerSettings) -> None:
        self.store, self.executor, self.settings = store, executor, settings
        self.auth = (
            Authenticator(settings.tokens, settings.tokens_file)
            if settings.tokens or settings.tokens_file
            else None
        )
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._closing = False

    @classmethod
    def from_settings(cls, settings: CharterSettings) -> TrainerServicer:
        s = settings.trainer
        store = RunStore(s.database_url.get_secret_value())
        log.info("trainer.store.opened", database=store.url.render_as_string(hide_password=True))
        return cls(store, build_executor(s), s)

    # -- lifecycle (charter.core.server.Lifecycle) ----------------------------------------------

    async def start(self) -> None:
        """Re-adopt the runs an earlier service process left active."""
        for record in await asyncio.to_thread(self.store.active):
            run_id = record.run.id
            if record.handle is None:  # recorded, never launched: launch it now
                await self._launch(run_id, 1, resume=False, note="launched after a trainer-service restart")
                continue
            outcome = await self.executor.outcome(record.handle)
            resume = outcome is not None and outcome.lost and self.settings.auto_resume
            log.info("trainer.run.adopted", run_id=run_id, running=outcome is None, resume=resume)
            self._follow(run_id, record.handle, record.events_seen, resume_if_lost=resume)

    async def drain(self) -> None:
        self._closing = True  # watchers end with UNAVAILABLE and reconnect elsewhere
        for changed in self._changed.values():
            changed.set()

    async def stop(self) -> None:
        """Stop following; the workers go on (a restarted service adopts them)."""
        for task in self._followers.values():
            task.cancel()
        for task in list(self._followers.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.store.close()

    # -- helpers --------------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _caller(self, context: aio.ServicerContext) -> None:
        if self.auth is not None:
            metadata = dict(context.invocation_metadata() or ())
            self.auth.authenticate(bearer(metadata.get("authorization"))).require("service")

    def _notify(self, run_id: str) -> None:
        changed = self._changed.pop(run_id, None)
        if changed is not None:
            changed.set()

    async def _change(
        self, run_id: str, mutate: Callable[[trainer_pb2.Run], Sequence[Message]], **columns: Any
    ) -> trainer_pb2.Run:
        run, _ = await self._db(self.store.change, run_id, mutate, **columns)
        self._notify(run_id)
        return run

    async def _launch(self, run_id: str, attempt: int, *, resume: bool, note: str = "") -> trainer_pb2.Run:
        record = await self._db(self.store.record, run_id)
        launch = Launch(run_id, attempt, MessageToJson(record.run.spec), resume)
        try:
            handle = await self.executor.launch(launch)
        except Exception as err:  # the platform refused it: the run fails with that reason
            log.warning("trainer.run.launch_failed", run_id=run_id, error=str(err))
            reason = f"could not start the worker: {err}"
            return await self._change(
                run_id, lambda run: [trainer_pb2.StateEvent(state=_STATE.RUN_STATE_FAILED, reason=reason)]
            )
        folder = self.executor.run_dir(run_id)

        def running(run: trainer_pb2.Run) -> list[Message]:
            run.attempt = attempt
            run.output_dir = f"{folder}/{MODEL_DIR}"
            if self.executor.name == "kubernetes":
                run.job_name = handle.rsplit("/", 1)[-1]
            kinds: list[Message] = [trainer_pb2.StateEvent(state=_STATE.RUN_STATE_RUNNING)]
            if note:
                kinds.append(trainer_pb2.LogEvent(level="info", message=note))
            return kinds

        run = await self._change(run_id, running, handle=handle, attempt=attempt, events_seen=0)
        log.info("trainer.run.started", run_id=run_id, attempt=attempt, resume=resume, handle=handle)
        self._follow(run_id, handle, 0)
        return run

    def _follow(self, run_id: str, handle: str, seen: int, *, resume_if_lost: bool = False) -> None:
        task = asyncio.ensure_future(self._follower(run_id, handle, seen, resume_if_lost))
        self._followers[run_id] = task
        task.add_done_callback(
            lambda t: self._followers.pop(run_id, None) if self._followers.get(run_id) is t else None
        )

    async def _follower(self, run_id: str, handle: str, seen: int, resume_if_lost: bool) -> None:
        count = 0
        try:
            async for line in self.executor.lines(handle):
                event = events.parse(line)
                if event is None:
                    continue
                count += 1
                if count <= seen:  # recorded by an earlier service process
                    continue
                await self._change(run_id, lambda run, e=event: _apply(run, e), events_seen=count)
            outcome = await self.executor.outcome(handle)
            while outcome is None:  # the log ended before the platform reports the end
                await asyncio.sleep(self.settings.poll_seconds)
                outcome = await self.executor.outcome(handle)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # following failed (the store, the platform): mark it, don't hide it
            log.exception("trainer.run.follow_failed", run_id=run_id)
            reason = f"the trainer service lost track of the worker: {err}"
            await self._change(run_id, lambda run: self._end(run, _STATE.RUN_STATE_FAILED, reason))
            return
        if outcome.lost and resume_if_lost:
            record = await self._db(self.store.record, run_id)
            if record.run.state not in TERMINAL:
                await self._launch(
                    run_id, record.attempt + 1, resume=True,
                    note=f"resumed after a trainer-service restart ({outcome.reason})",
                )  # fmt: skip
                return
        state = _STATE.RUN_STATE_SUCCEEDED if outcome.succeeded else _STATE.RUN_STATE_FAILED
        run = await self._change(run_id, lambda run: self._end(run, state, outcome.reason))
        log.info("trainer.run.ended", run_id=run_id, state=_STATE.Name(run.state), reason=run.reason)

    @staticmethod
    def _end(run: trainer_pb2.Run, state: int, reason: str) -> list[Message]:
        if run.state in TERMINAL:  # cancelled meanwhile: that stands
            return []
        return [trainer_pb2.StateEvent(state=state, reason=reason)]

    async def _resolve(self, spec: trainer_pb2.RunSpec) -> trainer_pb2.RunSpec:
        """The spec as the worker gets it: a reward-model run id replaced by that run's model folder,
        the review address filled in from settings."""
        spec = trainer_pb2.RunSpec.FromString(spec.SerializeToString())
        wanted = _EXECUTORS.get(spec.executor)
        if wanted is not None and wanted != self.executor.name:
            raise InvalidArgument(
                f"spec.executor: this trainer service runs workers with the {self.executor.name} executor "
                f"(trainer.executor), not {wanted}",
                field="spec.executor",
            )
        if spec.reward_model.startswith("r-"):
            try:
                source = await self._db(self.store.get, spec.reward_model)
            except NotFound:
                raise InvalidArgument(
                    f"spec.reward_model: no run {spec.reward_model}", field="spec.reward_model"
                ) from None
            if (
                source.spec.algorithm != trainer_pb2.ALGORITHM_REWARD_MODEL
                or source.state != _STATE.RUN_STATE_SUCCEEDED
            ):
                raise InvalidArgument(
                    f"spec.reward_model: run {source.id} is not a finished reward-model run "
                    f"({trainer_pb2.Algorithm.Name(source.spec.algorithm)}, {_STATE.Name(source.state)})",
                    field="spec.reward_model",
                )
            spec.reward_model = source.output_dir
        elif spec.reward_model and self.executor.name == "local" and not Path(spec.reward_model).exists():
            raise InvalidArgument(
                f"spec.reward_model: {spec.reward_model} is neither a run id nor a model folder",
                field="spec.reward_model",
            )
        if self.executor.name == "local":  # the worker runs in the run folder: paths as the service sees them
            if spec.base_model != "embedded":
                spec.base_model = str(Path(spec.base_model).expanduser().resolve())
            if spec.reward_model:
                spec.reward_model = str(Path(spec.reward_model).expanduser().resolve())
            if spec.data.WhichOneof("source") == "files":
                paths = spec.data.files.paths
                paths[:] = [str(Path(p).expanduser().resolve()) for p in paths]
        if spec.data.WhichOneof("source") == "label_stream" and not spec.data.label_stream.address:
            if not self.settings.review_address:
                raise InvalidArgument(
                    "spec.data.label_stream.address: name the review service (or set trainer.review_address)",
                    field="spec.data.label_stream.address",
                )
            spec.data.label_stream.address = self.settings.review_address
        return spec

    # -- RPCs -----------------------------------------------------------------------------------

    async def StartRun(self, request: trainer_pb2.StartRunRequest, context: aio.ServicerContext) -> Any:
        self._caller(context)
        if self._closing:
            raise Unavailable("the trainer service is shutting down; try another replica")
        await self._db(check, request.spec)
        spec = await self._resolve(request.spec)
        run, created = await self._db(
            self.store.create, spec, executor=self.executor.name, idempotency_key=request.idempotency_key
        )
        if created:
            log.info(
                "trainer.run.created", run_id=run.id, algorithm=ALGORITHMS[spec.algorithm], name=spec.name
            )
            run = await self._launch(run.id, 1, resume=False)
        return trainer_pb2.StartRunResponse(run=run)

    async def GetRun(self, request: trainer_pb2.GetRunRequest, context: aio.ServicerContext) -> Any:
        self._caller(context)
        return trainer_pb2.GetRunResponse(run=await self._db(self.store.get, request.run_id))

    async def ListRuns(self, request: trainer_pb2.ListRunsRequest, context: aio.ServicerContext) -> Any:
        self._caller(context)
        runs, token = await self._db(
            self.store.list, list(request.states), request.page_size, request.page_token
        )
        return trainer_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    async def CancelRun(self, request: trainer_pb2.CancelRunRequest, context: aio.ServicerContext) -> Any:
        self._caller(context)
        record = await self._db(self.store.record, request.run_id)
        if record.run.state == _STATE.RUN_STATE_CANCELLED:
            return trainer_pb2.CancelRunResponse(run=record.run)
        if record.run.state in TERMINAL:
            raise FailedPrecondition(
                f"run {record.run.id} has already ended ({_STATE.Name(record.run.state)})", field="run_id"
            )
        reason = request.reason or "cancelled"
        # recorded first, so the follower, seeing the worker die, leaves the state alone
        run = await self._change(
            record.run.id, lambda run: self._end(run, _STATE.RUN_STATE_CANCELLED, reason)
        )
        if record.handle is not None:
            await self.executor.cancel(record.handle)
        log.info("trainer.run.cancelled", run_id=run.id, reason=reason)
        return trainer_pb2.CancelRunResponse(run=run)

    async def ResumeRun(self, request: trainer_pb2.ResumeRunRequest, context: aio.ServicerContext) -> Any:
        self._caller(context)
        record = await self._db(self.store.record, request.run_id)
        if record.run.state not in (_STATE.RUN_STATE_FAILED, _STATE.RUN_STATE_CANCELLED):
            raise FailedPrecondition(
                f"run {record.run.id} is {_STATE.Name(record.run.state)}: "
                "only a failed or cancelled run resumes",
                field="run_id",
            )
        follower = self._followers.get(record.run.id)
        if follower is not None:  # the old attempt's follower is still reading its last lines
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(follower), timeout=30)
        where = record.run.last_checkpoint or "the start (no checkpoint yet)"
        run = await self._launch(
            record.run.id,
            record.attempt + 1,
            resume=True,
            note=f"resumed from {where} (attempt {record.attempt + 1})",
        )
        return trainer_pb2.ResumeRunResponse(run=run)

    async def WatchRun(
        self, request: trainer_pb2.WatchRunRequest, context: aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.WatchRunResponse]:
        self._caller(context)
        run_id, after = request.run_id, request.after_sequence
        await self._db(self.store.get, run_id)  # NOT_FOUND for an unknown run
        while True:
            if self._closing:
                raise Unavailable("the trainer service is shutting down; watch again from your last sequence")
            changed = self._changed.setdefault(run_id, asyncio.Event())
            batch = await self._db(self.store.events, run_id, after)
            for event in batch:
                after = event.sequence
                yield trainer_pb2.WatchRunResponse(event=event)
            if batch:
                continue
            run = await self._db(self.store.get, run_id)
            if run.state in TERMINAL:
                tail = await self._db(self.store.events, run_id, after)
                if not tail:
                    return
                continue
            with contextlib.suppress(TimeoutError):  # another replica may be the one recording
                await asyncio.wait_for(changed.wait(), self.settings.poll_seconds * 4)

"""Where a run's worker executes. The trainer service starts a worker through an `Executor` — a local
subprocess (the embedded default, `LocalExecutor`) or a Kubernetes Job
(`charter.trainer.kubernetes.KubernetesExecutor`) — and follows it through the same three calls:
its event lines (`charter.trainer.events`), its outcome, and cancel.

A worker is `python -m charter.app.trainer_worker --spec SPEC --run-dir DIR [--resume]`: it reads the
run spec (JSON of `charter.trainer.v1.RunSpec`, reward model already resolved to a path), trains,
checkpoints under DIR/checkpoints, writes the model to DIR/model, and reports events on stdout,
each carrying the attempt's nonce (`Launch.nonce`, in the worker's `CHARTER_EVENT_NONCE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.core.settings import TrainerSettings
from charter.trainer import events

log = structlog.get_logger("charter.trainer")

# a run folder's layout (the worker writes it; the service names paths in it)
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"


@dataclass(frozen=True)
class Launch:
    run_id: str
    attempt: int
    """1 for the first start, +1 for each resume (a Job name or log file per attempt)."""
    spec_json: str
    """The RunSpec as JSON (`google.protobuf.json_format.MessageToJson`), reward model resolved."""
    resume: bool
    """Resume from the run's last checkpoint (and its cached data) instead of starting afresh."""
    grants: tuple[str, ...] = ()
    """The tokens this run's worker needs ("review", "judge", "generator";
    `charter.trainer.resolve.grants`)."""
    threads: int | None = None
    """torch threads for a local worker (from `spec.resources.cpu`); None: `trainer.worker_threads`."""
    nonce: str = ""
    """This attempt's event nonce (`charter.trainer.events`): the worker gets it in its environment,
    and only its lines that carry it are events."""


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    reason: str
    """Why it failed ("" on success): the worker's `error` event, an exit code or a signal."""
    lost: bool = False
    """The worker vanished without finishing (its host restarted, its pod was evicted or deleted):
    not the run's own failure, so a restarting service may resume it."""


class Executor(Protocol):
    name: str

    def run_dir(self, run_id: str) -> str:
        """The run's folder as the worker sees it (checkpoints, data cache, model)."""
        ...

    async def launch(self, launch: Launch) -> str:
        """Start the worker; returns a handle the service stores with the run (survives restarts)."""
        ...

    def lines(self, handle: str) -> AsyncIterator[str]:
        """The worker's output lines of this attempt from its start, live; ends once it has exited."""
        ...

    async def outcome(self, handle: str, nonce: str = "") -> Outcome | None:
        """None while the worker runs (or may still be restarted by the platform); else how it ended
        (a failure's reason: the last `error` event carrying the attempt's `nonce`, if any)."""
        ...

    async def cancel(self, handle: str) -> None:
        """Stop the worker (idempotent)."""
        ...


def worker_command(python: str, spec_path: str, run_dir: str, resume: bool) -> list[str]:
    command = [python, "-m", "charter.app.trainer_worker", "--spec", spec_path, "--run-dir", run_dir]
    return command + (["--resume"] if resume else [])


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def exit_reason(returncode: int, last_error: str | None) -> str:
    if last_error:
        return last_error
    if returncode < 0:
        return f"worker process killed by {_signal_name(-returncode)}"
    return f"worker process exited with code {returncode}"


class LocalExecutor:
    """Workers as subprocesses of the trainer service, one folder per run under `runs_dir`:
    `spec.json`, `attempt-N.log` (the worker's output), `checkpoints/`, `model/`.

    The handle is `<pid>:<start time>:<run id>:<attempt>` (the launcher shell's pid and its start time
    in clock ticks, so a recycled pid is not mistaken for it). A worker runs in its own session, so it
    outlives a restart of the service; the new service process follows it by its log file, and learns
    its exit status from the `exit-N` file the launcher shell writes when it ends.
    """

    name = "local"

    def __init__(
        self,
        runs_dir: str | Path,
        *,
        python: str | None = None,
        threads: int | None = None,
        poll_seconds: float = 0.2,
        env: dict[str, str] | None = None,
        secrets: dict[str, dict[str, str]] | None = None,
        inherit: tuple[str, ...] = (),
    ) -> None:
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.python = python or sys.executable
        self.threads = threads
        self.poll_seconds = poll_seconds
        self.env = env or {}
        self.secrets = secrets or {}
        """Per grant ("review", "judge", "generator"): the variables a worker gets only when its run
        needs them."""
        self.inherit = inherit
        """The service's environment variables workers inherit (`worker_environment`)."""

    def worker_env(self, launch: Launch) -> dict[str, str]:
        """A worker's environment: the inherited allow-list, never a secret or a setting of the service,
        plus the tokens this run was granted."""
        env = worker_environment(os.environ, self.inherit)
        env.update(self.env)
        for grant in launch.grants:
            env.update(self.secrets.get(grant, {}))
        env["PYTHONUNBUFFERED"] = "1"
        threads = launch.threads or self.threads
        if threads:
            env["CHARTER_TORCH_THREADS"] = str(threads)
        if launch.nonce:
            env[events.NONCE_ENV] = launch.nonce
        return env

    def run_dir(self, run_id: str) -> str:
        return str(self.runs_dir / run_id)

    def _paths(self, handle: str) -> tuple[tuple[int, str], Path, Path]:
        pid, start, run_id, attempt = handle.split(":")
        folder = self.runs_dir / run_id
        return (int(pid), start), folder / f"attempt-{attempt}.log", folder / f"exit-{attempt}"

    async def launch(self, launch: Launch) -> str:
        folder = Path(self.run_dir(launch.run_id))
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "spec.json"
        spec_path.write_text(launch.spec_json, encoding="utf-8")
        log_path = folder / f"attempt-{launch.attempt}.log"
        exit_path = folder / f"exit-{launch.attempt}"
        exit_path.unlink(missing_ok=True)
        command = worker_command(self.python, str(spec_path), str(folder), launch.resume)
        env = self.worker_env(launch)
        # a shell records the worker's exit status, so a restarted service can still read it; `exec`
        # is not used: the shell must outlive the worker to write the file
        script = (
            '"$@" >>"$CHARTER_LOG" 2>&1; echo $? >"$CHARTER_EXIT.tmp"; mv "$CHARTER_EXIT.tmp" "$CHARTER_EXIT"'
        )
        env.update(CHARTER_LOG=str(log_path), CHARTER_EXIT=str(exit_path))
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", script, "charter-worker", *command,
            env=env, cwd=str(folder), start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self._reap(process)
        log.info("trainer.worker.started", run_id=launch.run_id, attempt=launch.attempt, pid=process.pid)
        return f"{process.pid}:{_start_time(process.pid)}:{launch.run_id}:{launch.attempt}"

    @staticmethod
    def _reap(process: Any) -> None:
        """Collect the shell's exit status in the background (no zombie while the service runs)."""
        task = asyncio.ensure_future(process.wait())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    @staticmethod
    def _alive(process: tuple[int, str]) -> bool:
        pid, start = process
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return False
        # a zombie (exited, not yet reaped) counts as gone; another start time is another process
        return fields[0] != "Z" and fields[19] == start

    async def lines(self, handle: str) -> AsyncIterator[str]:
        process, log_path, exit_path = self._paths(handle)
        position, pending = 0, b""
        while True:
            finished = exit_path.exists() or not self._alive(process)
            try:
                with open(log_path, "rb") as f:
                    f.seek(position)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            position += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace")
            if finished and not chunk:
                if pending:
                    yield pending.decode("utf-8", "replace")
                return
            if not chunk:
                await asyncio.sleep(self.poll_seconds)

    async def outcome(self, handle: str, nonce: str = "") -> Outcome | None:
        process, log_path, exit_path = self._paths(handle)
        if not exit_path.exists():
            if self._alive(process):
                return None
            return Outcome(False, "worker process vanished without an exit status", lost=True)
        code = int(exit_path.read_text().strip() or 1)
        if code == 0:
            return Outcome(True, "")
        if code > 128:  # the shell reports death by signal N as 128 + N
            code = -(code - 128)
        return Outcome(False, exit_reason(code, _last_error(log_path, nonce)))

    async def cancel(self, handle: str) -> None:
        process, _, _ = self._paths(handle)
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if not self._alive(process):
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process[0], sig)  # the shell and the worker: one session, one group
            deadline = asyncio.get_running_loop().time() + wait
            while self._alive(process) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)


def build_executor(settings: TrainerSettings) -> Executor:
    """The executor `trainer.executor` names, configured from the settings."""
    if settings.executor == "kubernetes":
        from charter.trainer.kubernetes import JobOptions, KubernetesExecutor

        k = settings.kubernetes
        if not k.image:
            raise InvalidArgument(
                "trainer.kubernetes.image: the Kubernetes executor needs the trainer image (pinned tag)",
                field="trainer.kubernetes.image",
            )
        options = JobOptions.from_settings(k)
        try:
            return KubernetesExecutor(options, poll_seconds=settings.poll_seconds * 4)
        except Exception as err:  # no in-cluster service account and no kubeconfig
            raise FailedPrecondition(
                f"trainer.executor: kubernetes, but no cluster credentials were found "
                f"(in-cluster service account or kubeconfig): {err}"
            ) from None
    review = {}
    if settings.review_token.get_secret_value():
        review["CHARTER_REVIEW_TOKEN"] = settings.review_token.get_secret_value()
    if settings.review_token_file is not None:
        review["CHARTER_REVIEW_TOKEN_FILE"] = str(settings.review_token_file)
    judge = {k: os.environ[k] for k in ("CHARTER_JUDGE_TOKEN", "CHARTER_JUDGE_TOKEN_FILE") if k in os.environ}
    names = ("CHARTER_GENERATOR_TOKEN", "CHARTER_GENERATOR_TOKEN_FILE")
    generator = {k: os.environ[k] for k in names if k in os.environ}
    return LocalExecutor(
        settings.runs_dir, threads=settings.worker_threads,
        secrets={"review": review, "judge": judge, "generator": generator},
        inherit=tuple(settings.worker_env),
    )  # fmt: skip


_NEVER_INHERITED = re.compile(
    r"TOKEN(?!IZERS)|SECRET|PASSW|CREDENTIAL|DATABASE|DSN|KEY|^CHARTER_(?!CLIENT__|LOGGING__)", re.IGNORECASE
)


def worker_environment(environ: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """The variables of `environ` named in `names` (a trailing `*` matches a prefix), less any whose
    name looks secret (token, secret, password, credential, database, DSN, key) and Charter's own
    settings but `client` (the worker's channels: TLS files) and `logging`."""
    exact = {n for n in names if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
    return {
        k: v
        for k, v in environ.items()
        if (k in exact or (prefixes and k.startswith(prefixes))) and not _NEVER_INHERITED.search(k)
    }


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _last_error(log_path: Path, nonce: str) -> str | None:
    """The message of the last `error` event (of the attempt with `nonce`) in a worker's log."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(text.splitlines()):
        event = events.parse(line, nonce)
        if event is not None and event["type"] == "error":
            return str(event.get("message", ""))
    return None

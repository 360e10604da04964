"""`charter train --spec FILE` and `charter runs …`: training runs through the trainer service.

Without `--address`, `charter train` starts the trainer service inside the command for the run
(the embedded default: a local worker subprocess, the run store at `trainer.database_url`) and
cancels the run if the command is interrupted; with `--address` it drives a running service and an
interrupt only stops watching. Either way the run's curves are written as a PNG when it ends.

A spec with a `continuous` section (`round_labels`, `round_seconds`, `max_rounds`) follows the label
stream and trains in rounds until `max_rounds` or `charter runs cancel`; `charter runs rounds ID`
lists the rounds it published, loadable elsewhere as `run:ID@N` or `run:ID@latest`.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import grpc
import typer
from charter_proto.trainer.v1 import trainer_pb2 as tp
from google.protobuf.json_format import MessageToDict

from charter.api import trainer as convert
from charter.api.run_spec_file import load_run_spec as load_spec
from charter.cli.trainer_access import StoreReader, trainer_client, trainer_reader
from charter.client.trainer import TrainerClient
from charter.core.errors import InvalidArgument
from charter.core.settings import load_settings
from charter.trainer.curves import plot_curves, summary

app = typer.Typer(help="Training runs: list, watch, plot, cancel, resume.", no_args_is_help=True)
_TERMINAL = (tp.RUN_STATE_SUCCEEDED, tp.RUN_STATE_FAILED, tp.RUN_STATE_CANCELLED)
Address = Annotated[
    str | None,
    typer.Option(help="host:port of a running trainer service (default: start one in this command)."),
]
Config = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")]
Token = Annotated[str | None, typer.Option(help="Bearer token, when the service has trainer.tokens set.")]


def _rpc_error(err: grpc.aio.AioRpcError) -> typer.Exit:
    typer.echo(f"error: {err.code().name}: {err.details()}", err=True)
    return typer.Exit(1)


def describe(run: tp.Run) -> str:
    algorithm = convert.ALGORITHM_NAMES.get(run.spec.algorithm, "?")
    state = convert.state_label(run.state)
    line = f"{run.id}  {state:<9}  {algorithm:<12}  step {run.step}/{run.total_steps or '?'}  {run.spec.name}"
    if run.reason:
        line += f"  ({run.reason})"
    return line


async def _follow(trainer: TrainerClient | StoreReader, run_id: str) -> list[tp.RunEvent]:
    """Print the run's progress until it ends (a live bar on a terminal, lines otherwise)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from charter.cli.progress import line as progress_line

    console = Console(stderr=True)
    run = await trainer.get_run(run_id)
    history: list[tp.RunEvent] = []
    live = console.is_terminal
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[metrics]}"), console=console, disable=not live,
    )  # fmt: skip
    with progress:
        task = progress.add_task(run.spec.name or run_id, total=run.total_steps or None, metrics="")
        async for event in trainer.watch_run(run_id):
            history.append(event)
            kind = event.WhichOneof("kind")
            if kind == "metrics":
                line = summary(dict(event.metrics.values))
                if not run.total_steps:
                    run = await trainer.get_run(run_id)
                progress.update(
                    task, completed=event.metrics.step, total=run.total_steps or None, metrics=line
                )
                if not live and line:  # step/total, rate and ETA as the bar shows them, then the metrics
                    console.print(f"{progress_line(progress.tasks[0], 'steps')} — {line}", highlight=False)
            elif kind == "state":
                name = convert.state_label(event.state.state)
                console.print(
                    f"{run_id}: {name}" + (f" — {event.state.reason}" if event.state.reason else "")
                )
            elif kind == "checkpoint":
                console.print(
                    f"checkpoint at step {event.checkpoint.step}: {event.checkpoint.path}", highlight=False
                )
            elif kind == "data":
                d = event.data
                where = (
                    f" (labels after {d.cursor_start.sequence} up to {d.cursor_end.sequence})"
                    if d.cursor_end.sequence
                    else ""
                )
                console.print(f"data: {d.rows} rows{where}", highlight=False)
            elif kind == "round":
                r = event.round
                console.print(
                    f"round {r.round} published: {r.rows} rows (labels after {r.cursor_start.sequence} up "
                    f"to {r.cursor_end.sequence}), model run:{run_id}@{r.round}",
                    highlight=False,
                )
            elif kind == "log":
                console.print(f"{event.log.level}: {event.log.message}", highlight=False)
    return history


def _curves(events: list[tp.RunEvent], title: str, out: Path) -> Path | None:
    metrics = [(e.metrics.step, dict(e.metrics.values)) for e in events if e.WhichOneof("kind") == "metrics"]
    return plot_curves(metrics, title, out)


async def _history(trainer: TrainerClient | StoreReader, run_id: str) -> list[tp.RunEvent]:
    return [event async for event in trainer.watch_run(run_id)]


def _finish(run: tp.Run, events: list[tp.RunEvent], plot: Path | None) -> None:
    out = _curves(events, f"{run.spec.name} ({run.id})", plot or Path(f"{run.id}-curves.png"))
    typer.echo(describe(run))
    if out is not None:
        typer.echo(f"curves: {out}")
    if run.state == tp.RUN_STATE_SUCCEEDED:
        typer.echo(f"model: {run.output_dir}")
    if run.state != tp.RUN_STATE_SUCCEEDED:
        raise typer.Exit(1)


def train(
    spec: Annotated[Path, typer.Option("--spec", "-s", help="Run spec (YAML or JSON; see docs/trainer.md).")],
    address: Address = None,
    token: Token = None,
    watch: Annotated[bool, typer.Option(help="Follow the run until it ends (with --address).")] = True,
    plot: Annotated[
        Path | None, typer.Option(help="Where to write the curves (default: <run id>-curves.png).")
    ] = None,
    idempotency_key: Annotated[
        str, typer.Option(help="Start the run once for this key (retries are safe).")
    ] = "",
    reward_model: Annotated[
        str | None,
        typer.Option(
            help="Override the spec's reward_model: a reward-model run id (a continuous run's round as "
            "ID@N or ID@latest) or a model folder."
        ),
    ] = None,
    base_model: Annotated[str | None, typer.Option(help="Override the spec's base_model.")] = None,
    config: Config = None,
) -> None:
    """Start a training run (SFT, reward model, DPO, PPO, GRPO, RLOO) and follow it to the end.

    A spec with a `continuous` section trains in rounds as labels arrive, each published as run:ID@N.

    It runs until continuous.max_rounds, or until cancelled (Ctrl-C here without --address).
    """
    from charter.core.logging import configure_logging

    settings = load_settings(config)
    quiet = address is None and settings.logging.level == "INFO"  # the progress display says it
    configure_logging(settings.logging.model_copy(update={"level": "WARNING"}) if quiet else settings.logging)
    run_spec = load_spec(spec)
    if reward_model is not None:
        run_spec.reward_model = reward_model
    if base_model is not None:
        run_spec.base_model = base_model

    async def go() -> None:
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM (a job scheduler, `timeout`) ends the command like Ctrl-C: the run is cancelled below
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with trainer_client(address, settings, token) as trainer:
            try:
                run_id = (await trainer.start_run(run_spec, idempotency_key)).id
            except grpc.aio.AioRpcError as err:
                raise _rpc_error(err) from None
            typer.echo(f"started {run_id}", err=True)
            if address is not None and not watch:
                typer.echo(run_id)
                return
            try:
                events = await _follow(trainer, run_id)
            except (asyncio.CancelledError, KeyboardInterrupt):
                if address is None:  # nothing else follows it: don't leave a worker behind
                    await trainer.cancel_run(run_id, "interrupted")
                raise
            run = await trainer.get_run(run_id)
            _finish(run, events, plot)

    try:
        asyncio.run(go())
    except asyncio.CancelledError:  # SIGTERM: the run was cancelled (or, with --address, left running)
        raise typer.Exit(143) from None


@app.command("list")
def list_runs(
    address: Address = None,
    token: Token = None,
    state: Annotated[
        list[str] | None, typer.Option(help="Only runs in these states (running, failed, …).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    config: Config = None,
) -> None:
    """Runs, newest first."""
    states = []
    for name in state or []:
        key = f"RUN_STATE_{name.upper()}"
        if key not in tp.RunState.keys():  # noqa: SIM118 (a proto enum wrapper)
            raise InvalidArgument(f"--state: unknown state {name!r}")
        states.append(tp.RunState.Value(key))

    async def go() -> None:
        async with trainer_reader(address, load_settings(config), token) as trainer:
            response = await trainer.list_runs(states, page_size=limit)
            for run in response.runs:
                typer.echo(describe(run))

    asyncio.run(go())


@app.command()
def get(run_id: str, address: Address = None, token: Token = None, config: Config = None) -> None:
    """A run in full (JSON)."""
    import json

    async def go() -> None:
        async with trainer_reader(address, load_settings(config), token) as trainer:
            try:
                run = await trainer.get_run(run_id)
            except grpc.aio.AioRpcError as err:
                raise _rpc_error(err) from None
            typer.echo(json.dumps(MessageToDict(run), indent=2))

    asyncio.run(go())


@app.command()
def watch(
    run_id: str,
    address: Address = None,
    token: Token = None,
    plot: Annotated[
        Path | None, typer.Option(help="Where to write the curves (default: <run id>-curves.png).")
    ] = None,
    config: Config = None,
) -> None:
    """Follow a run's progress live (from its first event) and write its curves when it ends."""

    async def go() -> None:
        async with trainer_client(address, load_settings(config), token) as trainer:
            try:
                events = await _follow(trainer, run_id)
            except grpc.aio.AioRpcError as err:
                raise _rpc_error(err) from None
            run = await trainer.get_run(run_id)
            _finish(run, events, plot)

    asyncio.run(go())


@app.command()
def cancel(
    run_id: str, reason: Annotated[str, typer.Option()] = "cancelled from the command line",
    address: Address = None, token: Token = None, config: Config = None,
) -> None:  # fmt: skip
    """Cancel a pending or running run."""

    async def go() -> None:
        async with trainer_client(address, load_settings(config), token) as trainer:
            try:
                run = await trainer.cancel_run(run_id, reason)
            except grpc.aio.AioRpcError as err:
                raise _rpc_error(err) from None
            typer.echo(describe(run))

    asyncio.run(go())


@app.command()
def resume(
    run_id: str, address: Address = None, token: Token = None,
    watch: Annotated[bool, typer.Option(help="Follow the resumed run until it ends.")] = True,
    plot: Annotated[Path | None, typer.Option(help="Where to write the curves.")] = None,
    config: Config = None,
) -> None:  # fmt: skip
    """Resume a failed or cancelled run from its last checkpoint, on the same data."""

    async def go() -> None:
        async with trainer_client(address, load_settings(config), token) as trainer:
            try:
                run = await trainer.resume_run(run_id)
            except grpc.aio.AioRpcError as err:
                raise _rpc_error(err) from None
            typer.echo(describe(run), err=True)
            if watch or address is None:
                events = await _follow(trainer, run_id)
                _finish(await trainer.get_run(run_id), events, plot)

    asyncio.run(go())


@app.command()
def rounds(run_id: str, address: Address = None, token: Token = None, config: Config = None) -> None:
    """The rounds a continuous run has published: cursor range, rows, step and model folder."""

    async def go() -> None:
        async with trainer_reader(address, load_settings(config), token) as trainer:
            try:
                published = await trainer.list_rounds(run_id)
            except grpc.aio.AioRpcError as err:
                raise _rpc_error(err) from None
            for r in published:
                typer.echo(
                    f"run:{run_id}@{r.round}  labels {r.cursor_start.sequence}..{r.cursor_end.sequence}  "
                    f"{r.rows} rows  step {r.step}  {r.model_dir}"
                )

    asyncio.run(go())


@app.command()
def plot(
    run_id: str,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write (default: <run id>-curves.png).")
    ] = None,
    address: Address = None,
    token: Token = None,
    config: Config = None,
) -> None:
    """Write a run's curves (loss, reward, KL, …) as a PNG."""

    async def go() -> None:
        async with trainer_reader(address, load_settings(config), token) as trainer:
            try:
                run = await trainer.get_run(run_id)
                events = await _history(trainer, run_id) if run.state in _TERMINAL else []
            except grpc.aio.AioRpcError as err:
                raise _rpc_error(err) from None
            if run.state not in _TERMINAL:
                raise InvalidArgument(f"run {run_id} is still going: use `charter runs watch {run_id}`")
            written = _curves(events, f"{run.spec.name} ({run.id})", out or Path(f"{run.id}-curves.png"))
            typer.echo(str(written) if written else "the run logged no metrics", err=written is None)

    asyncio.run(go())

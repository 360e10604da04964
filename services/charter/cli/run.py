"""`charter run SPEC...`: run or resume a pipeline, or several in order on one engine."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from charter.cli.progress import CommandProgress, items_per_second
from charter.core.errors import InvalidArgument
from charter.core.logging import configure_logging
from charter.core.settings import load_settings


class RateColumn(ProgressColumn):
    """Items (prompts or pairs) finished by this run per second since it started (items done by an
    earlier run of a resumed job do not count)."""

    def render(self, task: Task) -> Text:
        rate = items_per_second(task)
        return Text("-- items/s" if rate is None else f"{rate:.3f} items/s")


def run(
    spec_paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="SPEC",
            help="A pipeline spec, e.g. pipelines/sl-cai.yaml or pipelines/rlaif.yaml; several run in "
            "order in one process on one engine (e.g. pipelines/sl-cai.yaml pipelines/rl-cai-sl.yaml).",
        ),
    ],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
    generator: Annotated[
        str | None,
        typer.Option(help="Remote mode: the generator's host:port or target (dns:///…, ipv4:a,b), not rlaif"),
    ] = None,
    critic_reviser: Annotated[
        str | None, typer.Option(help="Remote mode: the critic-reviser's host:port or gRPC target.")
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(help="Remote mode: the judge's host:port or target (rl-cai, best-of-n with a judge)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N source rows (rlaif: set prompts.per_iteration).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Output folder (overrides the spec).")] = None,
    allow_constitution_change: Annotated[
        bool,
        typer.Option(
            help="Resume even if the constitution changed since the output folder's last record "
            "(refused by default: one folder would mix two versions; the records say which made each)."
        ),
    ] = False,
) -> None:
    """Run a pipeline spec (kind sl-cai, rl-cai, best-of-n, or rlaif: iterated RLAIF — label the
    policy's own samples, DPO, evaluate, promote only past the gates; remote mode from the spec's
    services section); run it again after an interruption and it resumes where it stopped. Several
    specs (not rlaif) run one after the other in this process, and those in local mode share one
    engine, started once: e.g. SL-CAI, then RL-CAI on its output folder."""
    from charter.pipelines.rlaif_spec import RlaifSpec

    with_flags = functools.partial(
        _with_flags, generator=generator, critic_reviser=critic_reviser, judge=judge, limit=limit,
        output=output, allow_constitution_change=allow_constitution_change,
    )  # fmt: skip
    specs = [with_flags(path) for path in spec_paths]
    if len(specs) > 1:
        if output is not None:
            raise InvalidArgument(
                "--output: several specs need several output folders; set each spec's output", field="output"
            )
        if any(isinstance(spec, RlaifSpec) for spec in specs):
            raise InvalidArgument(
                "kind rlaif runs alone: it starts and stops its own engines between steps", field="kind"
            )
    settings = [_settings(spec, config) for spec in specs]
    local = [s.inference for spec, s in zip(specs, settings, strict=True) if spec.services.mode == "local"]
    if any(i != local[0] for i in local):
        raise InvalidArgument(
            "inference: the specs in local mode share one engine, and their inference sections (or "
            "settings) differ; give them the same one, or run them one at a time",
            field="inference",
        )
    configure_logging(
        settings[0].logging.model_copy(update={"level": "WARNING"})
        if settings[0].logging.level == "INFO"
        else settings[0].logging
    )
    asyncio.run(_run_all(specs, settings, Console(stderr=True)))


def _with_flags(path: Path, *, generator: str | None, critic_reviser: str | None, judge: str | None,
                limit: int | None, output: Path | None, allow_constitution_change: bool) -> Any:  # fmt: skip
    """The spec at `path` with the command line's flags applied."""
    from charter.pipelines.rlaif_spec import FLAGS_REFUSED, RlaifSpec
    from charter.pipelines.spec import RlCaiSpec, load_spec

    spec = load_spec(path)
    if isinstance(spec, RlaifSpec) and (generator or critic_reviser or judge):
        raise InvalidArgument(f"--generator/--judge: {FLAGS_REFUSED}", field="services.mode")
    if isinstance(spec, RlaifSpec) and limit is not None:
        raise InvalidArgument(
            "--limit: kind rlaif takes its prompts per iteration from prompts.per_iteration",
            field="prompts.per_iteration",
        )
    changes: dict[str, Any] = {}
    if generator or critic_reviser or judge:
        services = spec.services.model_copy(
            update={"mode": "remote", "generator": generator or spec.services.generator,
                    "critic_reviser": critic_reviser or spec.services.critic_reviser,
                    "judge": judge or spec.services.judge}
        )  # fmt: skip
        changes["services"] = services
    if limit is not None:
        if isinstance(spec, RlCaiSpec):
            changes["pairs"] = spec.pairs.model_copy(update={"limit": limit})
        else:
            assert not isinstance(spec, RlaifSpec)  # refused above
            changes["source"] = spec.source.model_copy(update={"limit": limit})
    if output is not None:
        changes["output"] = output
    if allow_constitution_change and not isinstance(spec, RlaifSpec):
        changes["constitution_change"] = "continue"
    return spec.model_copy(update=changes) if changes else spec


def _settings(spec: Any, config: Path | None) -> Any:
    overrides: dict[str, Any] = {}
    if spec.inference.overrides():
        overrides["inference"] = spec.inference.overrides()
    if spec.constitutions_dir is not None:
        overrides["constitutions"] = {"directory": spec.constitutions_dir}
    return load_settings(config, **overrides)


async def _run_all(specs: list[Any], settings: list[Any], console: Console) -> None:
    """Each spec in turn; with several, the local ones share one engine, built when the first needs it."""
    engines: list[Any] = []

    def shared_engine(inference: Any) -> Any:
        if not engines:
            from charter.inference.factory import build_engine

            engines.append(build_engine(inference))
        return engines[0]

    try:
        for spec, spec_settings in zip(specs, settings, strict=True):
            factory = (lambda s=spec_settings: shared_engine(s.inference)) if len(specs) > 1 else None
            await _run_one(spec, spec_settings, console, factory)
    finally:
        for engine in engines:
            await engine.close()


async def _run_one(spec: Any, settings: Any, console: Console, engine_factory: Any) -> None:
    from charter.pipelines import best_of_n, rl_cai, rlaif, sl_cai
    from charter.pipelines.rlaif_spec import RlaifSpec
    from charter.pipelines.spec import BestOfNSpec, RlCaiSpec, SlCaiSpec

    columns = [TextColumn(f"[bold]{spec.name}"), BarColumn(), MofNCompleteColumn(), RateColumn()]
    progress = CommandProgress(*columns, TimeRemainingColumn(), console=console)
    task = progress.add_task(spec.name, total=None)

    def on_start(total: int, done: int) -> None:
        progress.update(task, total=total, completed=done, resumed_at=done)
        progress.start_task(task)
        progress.start()  # not before: a spec refused up front leaves its one error line, no bar

    runners: dict[type[Any], Any] = {
        SlCaiSpec: sl_cai,
        RlCaiSpec: rl_cai,
        BestOfNSpec: best_of_n,
        RlaifSpec: rlaif,
    }
    pipeline: Any = runners[type(spec)]
    hooks: dict[str, Any] = {"on_start": on_start, "on_progress": lambda n: progress.advance(task, n)}
    if isinstance(spec, RlaifSpec):  # steps, not items: say what each one did
        hooks["on_step"] = lambda line: console.print(line, highlight=False)
    elif engine_factory is not None:
        hooks["engine_factory"] = engine_factory
    try:
        summary = await pipeline.run(spec, settings, **hooks)
    finally:
        if progress.running:
            progress.stop()
    report = summary.as_dict()
    (spec.output / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    if isinstance(spec, RlaifSpec):
        _rlaif_report(spec, summary, console)
    elif isinstance(spec, SlCaiSpec):
        _sl_cai_report(spec, summary, console)
    elif isinstance(spec, RlCaiSpec):
        _rl_cai_report(spec, summary, console)
    else:
        _best_of_n_report(spec, summary, console)


def _rlaif_report(spec: Any, summary: Any, console: Console) -> None:
    console.print(
        f"{summary.steps_run} steps run ({summary.steps_done_before} were already done); "
        f"{summary.seconds:.1f} s"
    )
    for it in summary.iterations:
        typer.echo(f"iteration {it['iteration']}: {it['why']}")
    typer.echo(f"policy: {summary.policy['version']} ({summary.policy['model']})")
    if summary.stopped:
        typer.echo(f"stopped at {summary.stopped}")
    typer.echo(f"report: {spec.output / 'report.md'} (also report.json, iterations.png, labels.png)")


def _rl_cai_report(spec: Any, summary: Any, console: Console) -> None:
    console.print(
        f"{summary.written} pairs labelled this run ({summary.already_done} were already done, "
        f"{summary.total} in all), {summary.row_errors} row errors; "
        f"labels by status: {dict(summary.statuses) or '{}'}; swap-consistent: {summary.swap_consistent}; "
        f"errors: {dict(summary.errors) or '{}'}; {summary.seconds:.1f} s"
    )
    if spec.ledger is not None:
        target = spec.ledger.database or spec.ledger.address
        console.print(f"review ledger ({target}): {dict(summary.ledger) or 'nothing new'}")
    typer.echo(
        f"dataset: {spec.output / 'preferences.jsonl'} ({summary.preferences} rows; also "
        "preferences.parquet, records.jsonl, records.parquet)"
    )
    example = _first_line(spec.output / "preferences.jsonl")
    if example:
        typer.echo("example row:\n" + json.dumps(json.loads(example), indent=2, ensure_ascii=False))


def _sl_cai_report(spec: Any, summary: Any, console: Console) -> None:
    console.print(
        f"{summary.written} prompts written this run ({summary.already_done} were already done, "
        f"{summary.total} in all), {summary.row_errors} row errors; "
        f"samples by status: {dict(summary.statuses) or '{}'}; errors: {dict(summary.errors) or '{}'}; "
        f"tokens: {summary.prompt_tokens} prompt + {summary.completion_tokens} generated; "
        f"{summary.seconds:.1f} s"
    )
    typer.echo(f"dataset: {spec.output / 'sft.jsonl'} (also sft.parquet, records.jsonl, records.parquet)")
    example = _first_line(spec.output / "sft.jsonl") or _first_line(spec.output / "records.jsonl")
    if example:
        typer.echo("example row:\n" + json.dumps(json.loads(example), indent=2, ensure_ascii=False))


def _best_of_n_report(spec: Any, summary: Any, console: Console) -> None:
    judged = f"; {summary.comparisons} judge comparisons ({summary.unscored_comparisons} unscored)"
    console.print(
        f"{summary.written} prompts sampled and scored this run ({summary.already_done} were already done, "
        f"{summary.total} in all), {summary.row_errors} row errors; "
        f"prompts by status: {dict(summary.statuses) or '{}'}; {summary.samples} samples "
        f"({summary.empty_samples} empty, {summary.duplicate_samples} repeats)"
        f"{judged if spec.scorer.judge is not None else ''}; errors: {dict(summary.errors) or '{}'}; "
        f"{summary.seconds:.1f} s"
    )
    if spec.ledger is not None:
        target = spec.ledger.database or spec.ledger.address
        console.print(f"review ledger ({target}): {dict(summary.ledger) or 'nothing new'}")
    typer.echo(
        f"datasets: {spec.output / 'sft.jsonl'} ({summary.sft_rows} rows), "
        f"{spec.output / 'preferences.jsonl'} ({summary.preferences} rows); also their .parquet, "
        "records.jsonl, records.parquet"
    )


def _first_line(path: Path) -> str | None:
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as f:
        return f.readline() or None

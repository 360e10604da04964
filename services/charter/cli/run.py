"""`charter run SPEC`: run or resume a pipeline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from charter.core.errors import InvalidArgument
from charter.core.logging import configure_logging
from charter.core.settings import load_settings


class RateColumn(ProgressColumn):
    """Items (prompts or pairs) finished by this run per second since it started (items done by an
    earlier run of a resumed job do not count)."""

    def render(self, task: Task) -> Text:
        done = task.completed - task.fields.get("resumed_at", 0)
        if not task.elapsed or done <= 0:
            return Text("-- items/s")
        return Text(f"{done / task.elapsed:.3f} items/s")


def run(
    spec_path: Annotated[
        Path,
        typer.Argument(
            metavar="SPEC", help="A pipeline spec, e.g. pipelines/sl-cai.yaml or pipelines/rlaif.yaml."
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
    services section); run it again
    after an interruption and it resumes where it stopped."""
    from charter.pipelines import best_of_n, rl_cai, rlaif, sl_cai
    from charter.pipelines.rlaif_spec import FLAGS_REFUSED, RlaifSpec
    from charter.pipelines.spec import BestOfNSpec, RlCaiSpec, SlCaiSpec, load_spec

    spec = load_spec(spec_path)
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
            changes["source"] = spec.source.model_copy(update={"limit": limit})
    if output is not None:
        changes["output"] = output
    if allow_constitution_change and not isinstance(spec, RlaifSpec):
        changes["constitution_change"] = "continue"
    spec = spec.model_copy(update=changes) if changes else spec
    overrides: dict[str, Any] = {}
    if spec.inference.overrides():
        overrides["inference"] = spec.inference.overrides()
    if spec.constitutions_dir is not None:
        overrides["constitutions"] = {"directory": spec.constitutions_dir}
    settings = load_settings(config, **overrides)
    configure_logging(
        settings.logging.model_copy(update={"level": "WARNING"})
        if settings.logging.level == "INFO"
        else settings.logging
    )
    console = Console(stderr=True)
    columns = [TextColumn(f"[bold]{spec.name}"), BarColumn(), MofNCompleteColumn(), RateColumn()]
    progress = Progress(*columns, TimeRemainingColumn(), console=console)
    task = progress.add_task(spec.name, total=None)

    def on_start(total: int, done: int) -> None:
        progress.update(task, total=total, completed=done, resumed_at=done)
        progress.start_task(task)
        progress.start()  # not before: a spec refused up front leaves its one error line, no bar

    pipeline: Any = {SlCaiSpec: sl_cai, RlCaiSpec: rl_cai, BestOfNSpec: best_of_n, RlaifSpec: rlaif}[
        type(spec)
    ]
    hooks: dict[str, Any] = {"on_start": on_start, "on_progress": lambda n: progress.advance(task, n)}
    if isinstance(spec, RlaifSpec):  # steps, not items: say what each one did
        hooks["on_step"] = lambda line: console.print(line, highlight=False)
    try:
        summary = asyncio.run(pipeline.run(spec, settings, **hooks))
    finally:
        if progress.live.is_started:
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

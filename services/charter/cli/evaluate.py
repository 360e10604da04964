"""`charter eval judge`: measure a judge (model + constitution) against human preference labels."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from charter.cli.progress import CommandProgress
from charter.core.logging import configure_logging
from charter.core.settings import load_settings

app = typer.Typer(help="Evaluate Charter's components against human labels.", no_args_is_help=True)

Engine = Literal["auto", "vllm", "openai", "transformers"]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]
Split = Literal["all", "tune", "report"]
Method = Literal["multiple_choice", "calibrated", "contrastive", "reward_model"]


@app.command()
def judge(
    data: Annotated[
        Path,
        typer.Option(
            help="Human-labelled pairs: an hh-rlhf file (chosen/rejected transcripts), "
            "prompt/chosen/rejected JSONL or Parquet, or prompt/response_a/response_b/preferred."
        ),
    ],
    constitution: Annotated[str, typer.Option(help="Constitution id to judge by.")] = "harmless",
    model: Annotated[
        str | None, typer.Option(help="Model: 'embedded', a local path, or the served name (openai engine).")
    ] = None,
    engine: Annotated[
        Engine | None, typer.Option(help="Inference engine (settings: inference.engine).")
    ] = None,
    dtype: Annotated[Dtype | None, typer.Option(help="Weights/compute dtype of in-process engines.")] = None,
    openai_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible endpoint for --engine openai, e.g. http://vllm:8000/v1."),
    ] = None,
    judge_address: Annotated[
        str | None,
        typer.Option("--judge", help="Use a running judge service (host:port or gRPC target) instead."),
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Bearer token for --judge, when the service has judge.tokens set.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows of the data.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for principle sampling and A/B placement.")] = 0,
    principles_per_label: Annotated[int, typer.Option(help="Principles averaged per label.")] = 1,
    chain_of_thought: Annotated[bool, typer.Option(help="Rationale first, clamped probabilities.")] = False,
    method: Annotated[
        Method | None,
        typer.Option(
            help="Scoring method (default: the judge's judge.method setting); see docs/evaluation.md."
        ),
    ] = None,
    contrastive_beta: Annotated[
        float | None,
        typer.Option(
            help="β of the contrastive method (default: judge.contrastive_beta); eval.json reports "
            "the β that fits the data."
        ),
    ] = None,
    logit_scale: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            max=1000.0,
            help="Multiple-choice methods: p_a on the logit scale times this (default: "
            "judge.logit_scale); eval.json reports the scale that fits the data (summary.scale_fit).",
        ),
    ] = None,
    reward_model: Annotated[
        str | None,
        typer.Option(
            help="A trained reward model as the judge: its folder, or run:ID (a trainer run's final "
            "model); p_a = sigmoid(r(A) - r(B)). Implies --method reward_model unless --compare."
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Compare judge variants on the same pairs in one run: comma-separated variants METHOD, "
            "METHOD+cot (chain of thought) or METHOD@K (K principles), "
            "e.g. multiple_choice,calibrated,contrastive,multiple_choice+cot,calibrated@4, and "
            "reward_model (with --reward-model)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per judge call.")] = 64,
    split: Annotated[
        Split,
        typer.Option(
            help="tune | report: one half of a seeded 50/50 split of the pairs (choose a method "
            "on tune, report it on report); all: every pair."
        ),
    ] = "all",
    split_seed: Annotated[int, typer.Option(help="Seed of the tune/report split.")] = 0,
    output: Annotated[Path, typer.Option(help="Folder for eval.json, labels.jsonl and the PNGs.")] = Path(
        "out/eval-judge"
    ),
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Agreement with the human choice (95% CI), swap-consistent agreement, position consistency,
    calibration (ECE, reliability diagram), agreement per principle, and labels/s — or, with --compare,
    those figures for several judge variants on the same pairs, in one table and chart."""
    from charter.evaluation.judge import EvalOptions, evaluate
    from charter.evaluation.judge_compare import baseline_line, table
    from charter.evaluation.judge_compare import compare as compare_variants
    from charter.judge.metrics import format_table

    inference: dict[str, Any] = {
        k: v for k, v in {"engine": engine, "model": model, "dtype": dtype}.items() if v is not None
    }
    if openai_url:
        inference["openai"] = {"base_url": openai_url}
    settings = load_settings(config, **({"inference": inference} if inference else {}))
    configure_logging(
        settings.logging.model_copy(update={"level": "WARNING"})
        if settings.logging.level == "INFO"
        else settings.logging
    )
    options = EvalOptions(
        data=data,
        constitution=constitution,
        output=output,
        limit=limit,
        seed=seed,
        principles_per_label=principles_per_label,
        chain_of_thought=chain_of_thought,
        batch_size=batch_size,
        judge=judge_address,
        token=token,
        split=split,
        split_seed=split_seed,
        method=method,
        contrastive_beta=contrastive_beta,
        logit_scale=logit_scale,
        reward_model=reward_model,
        compare=tuple(v for v in (compare or "").split(",") if v.strip()),
    )
    console = Console(stderr=True)
    progress = CommandProgress(
        TextColumn("[bold]judging {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        unit="pairs",
    )
    task = progress.add_task("pairs", total=None)
    if options.compare:
        with progress:
            result = asyncio.run(
                compare_variants(
                    options,
                    settings,
                    on_start=lambda name, total: progress.reset(task, total=total, description=name),
                    on_progress=lambda n: progress.advance(task, n),
                )
            )
        typer.echo(
            f"{result['config']['pairs']} pairs from {data}"
            + (f" (the {split} half, split seed {split_seed})" if split != "all" else "")
        )
        typer.echo(table(result["rows"]) + baseline_line(result["baselines"]))
        typer.echo(f"written: {output / 'compare.json'}, compare.md, compare.png and one folder per variant")
        return
    with progress:
        report = asyncio.run(
            evaluate(
                options,
                settings,
                on_start=lambda total: progress.update(task, total=total),
                on_progress=lambda n: progress.advance(task, n),
            )
        )
    judge_ref = report["config"]["judge"]
    typer.echo(
        f"judge {judge_ref.get('name')} ({judge_ref.get('engine')}), constitution "
        f"{report['config']['constitution'].get('id')} {report['config']['constitution'].get('version')}, "
        f"{report['config']['pairs']} pairs from {data}"
        + (f" (the {split} half, split seed {split_seed})" if split != "all" else "")
    )
    typer.echo(format_table(report["summary"]) + baseline_line(report["baselines"]))
    typer.echo(f"written: {output / 'eval.json'}, labels.jsonl, reliability.png, principles.png")


@app.command()
def policy(
    spec: Annotated[Path, typer.Argument(help="An eval-policy spec (YAML; docs/evaluation.md).")],
    output: Annotated[Path | None, typer.Option(help="Output folder (overrides the spec's).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Did training help? Generates from every model in the spec and reports win rate against the
    baseline (AI judge, both orders), Bradley–Terry/Elo, red-team harmlessness beside benign-prompt
    refusals, held-out reward, the gold implicit preference accuracy on human pairs and a length check.
    Resumable: re-running the same spec into the same folder reuses what is there."""
    from transformers.utils import logging as transformers_logging

    from charter.evaluation.policy import Hooks, evaluate
    from charter.evaluation.policy_spec import load_eval_spec

    # the command draws its own progress; errors stay one line (unannotated in transformers)
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    loaded = load_eval_spec(spec)
    if output is not None:
        loaded = loaded.model_copy(update={"output": output})
    settings = load_settings(config)
    configure_logging(
        settings.logging.model_copy(update={"level": "WARNING"})
        if settings.logging.level == "INFO"
        else settings.logging
    )
    console = Console(stderr=True)
    progress = CommandProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console,
    )  # fmt: skip
    tasks: list[Any] = []

    def on_phase(phase: str, total: int) -> None:
        tasks.append(progress.add_task(phase, total=total))

    with progress:
        asyncio.run(evaluate(loaded, settings, Hooks(on_phase, lambda n: progress.advance(tasks[-1], n))))
    typer.echo((loaded.output / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"written: {loaded.output / 'eval.json'}, report.md and the charts")

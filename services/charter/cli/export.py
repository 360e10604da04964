"""`charter export`: accepted labels from the review ledger as training data.

`--format hf` writes a Hugging Face dataset folder (`charter.datasets.hf_folder`): the preference rows
as split `train`, read by `datasets.load_from_disk(out)` and `datasets.load_dataset(out)`, with a
dataset card; `--push-to-hub REPO_ID` then uploads it (needs a Hugging Face token).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Literal, cast

import typer
from charter_proto.review.v1 import review_pb2

from charter.core.auth import read_token
from charter.core.errors import InvalidArgument
from charter.core.logging import configure_logging
from charter.core.settings import load_settings

Format = Literal["trl-preference", "jsonl", "parquet", "hf"]


def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (a folder for --format hf).")],
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            help="trl-preference: TRL prompt/chosen/rejected JSONL with the soft label and provenance "
            "(ties left out); parquet: the same rows as Parquet; jsonl: every accepted label in full; "
            "hf: the trl-preference rows as a Hugging Face dataset folder with a dataset card.",
        ),
    ] = "trl-preference",
    database: Annotated[
        str | None,
        typer.Option(
            help="Read the ledger database directly (SQLAlchemy URL; default: review.database_url)."
        ),
    ] = None,
    review: Annotated[
        str | None, typer.Option(help="Stream from a running review service (host:port) instead.")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Service token for --review.")] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the service token for --review.")
    ] = None,
    from_cursor: Annotated[int, typer.Option(min=0, help="Start after this stream sequence.")] = 0,
    constitution: Annotated[str | None, typer.Option(help="Only labels of this constitution.")] = None,
    principle: Annotated[
        list[str] | None, typer.Option(help="Only labels judged by these principles.")
    ] = None,
    source: Annotated[list[str] | None, typer.Option(help="Only labels decided by: ai, human.")] = None,
    min_confidence: Annotated[float | None, typer.Option(help="Only labels at least this confident.")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            help="With --review: keep the stream open and append labels as they are accepted (JSONL "
            "formats); a restarted export resumes after the last sequence in --out."
        ),
    ] = False,
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            "--push-to-hub",
            metavar="REPO_ID",
            help="With --format hf: upload the folder as this Hugging Face dataset repository "
            "(token: HF_TOKEN or `hf auth login`).",
        ),
    ] = None,
    private: Annotated[bool, typer.Option(help="With --push-to-hub: create the repository private.")] = False,
    licence: Annotated[
        str,
        typer.Option(
            "--license", help="With --format hf: the source prompts' licence (a Hugging Face licence id)."
        ),
    ] = "unknown",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Export accepted labels (human decisions override the AI's) with full provenance."""
    from charter.api.review import SOURCES, export_rows, ledger_labels
    from charter.client.review import ReviewClient
    from charter.review.export import JsonlAppender, write_file

    settings = load_settings(config)
    configure_logging(settings.logging)
    unknown = sorted(set(source or []) - set(SOURCES))
    if unknown:
        raise InvalidArgument(f"--source: unknown source {unknown[0]!r}; use ai or human", field="source")
    flt = review_pb2.LabelFilter(
        constitution_id=constitution or "",
        principle_ids=principle or [],
        sources=[cast("review_pb2.LabelSource.ValueType", SOURCES[s]) for s in source or []],
        min_confidence=min_confidence,
    )
    if review is None and (follow or token or token_file):
        raise InvalidArgument("--follow, --token and --token-file need --review HOST:PORT")
    if fmt != "hf" and (push_to_hub or private or licence != "unknown"):
        raise InvalidArgument("--push-to-hub, --private and --license need --format hf")
    hub = None
    if fmt == "hf":
        if follow:
            raise InvalidArgument("--follow appends to a JSONL file; --format hf writes a folder at once")
        from charter.datasets import hf_folder

        hf_folder.require_datasets()  # before any work
        hub = hf_folder.hub_token() if push_to_hub else None

    def write_hf(labels: list[review_pb2.AcceptedLabel]) -> None:
        _write_hf(labels, out, licence, settings.constitutions.directory, push_to_hub, hub, private)

    if review is not None:
        secret = token or (read_token(token_file, "--token-file") if token_file else None)
        if not secret:
            raise InvalidArgument("--review needs a service token: --token or --token-file")
        if follow:
            appender = JsonlAppender(out, fmt)
            start = max(from_cursor, appender.last_sequence)
            typer.echo(f"following {review} after sequence {start} into {out} (Ctrl-C to stop)", err=True)

            async def tail() -> None:
                try:
                    async with ReviewClient(review, token=secret) as client:
                        async for label in client.stream_labels(start, flt, follow=True):
                            appender.append(*next(export_rows([label], fmt)))
                finally:
                    appender.close()

            asyncio.run(tail())
            return

        async def collect() -> list[review_pb2.AcceptedLabel]:
            async with ReviewClient(review, token=secret) as client:
                return [label async for label in client.stream_labels(from_cursor, flt)]

        streamed = asyncio.run(collect())
        if fmt == "hf":
            return write_hf(streamed)
        summary = write_file(export_rows(streamed, fmt), fmt, out)
    else:
        from charter.review.store import Ledger

        ledger = Ledger(database or settings.review.database_url.get_secret_value(), run_migrations=False)
        try:
            labels = ledger_labels(ledger, from_cursor, flt)
            if fmt == "hf":
                return write_hf(list(labels))
            summary = write_file(export_rows(labels, fmt), fmt, out)
        finally:
            ledger.close()
    typer.echo(
        f"wrote {summary.rows} rows ({summary.labels} accepted labels, last sequence "
        f"{summary.last_sequence}) to {out}"
    )


def _write_hf(
    labels: list[review_pb2.AcceptedLabel],
    out: Path,
    licence: str,
    constitutions: Path,
    repo_id: str | None,
    token: str | None,
    private: bool,
) -> None:
    """The export as a Hugging Face dataset folder (and its upload, given a repository and token)."""
    from charter.api.review import export_rows
    from charter.datasets import hf_folder

    rows = [row for _, row in export_rows(labels, "trl-preference") if row is not None]
    records = [row for _, row in export_rows(labels, "jsonl") if row is not None]
    card = hf_folder.export_card(
        records,
        len(rows),
        licence=licence,
        command=hf_folder.command_line(),
        known=hf_folder.known_constitutions(constitutions),
    )
    hf_folder.write_saved_dataset(out, {"train": rows}, card)
    last = labels[-1].sequence if labels else 0
    typer.echo(f"wrote {len(rows)} rows ({len(labels)} accepted labels, last sequence {last}) to {out}")
    if repo_id and token:
        url = hf_folder.push_folder(out, repo_id, token=token, private=private)
        typer.echo(f"pushed {out} to https://huggingface.co/datasets/{repo_id} ({url})")

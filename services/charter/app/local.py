"""Charter's services in this process, on a free localhost port: how pipelines in local mode, the
CLI (`charter train`, `charter eval judge`) and the tests run services without deploying them.

Example:
    async with local_services(settings, ("generator", "critic-reviser")) as address:
        ...  # connect with charter.client
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from charter.app.catalog import SERVICES, Resources
from charter.core.server import CharterServer
from charter.core.settings import CharterSettings, ServerSettings
from charter.inference.types import InferenceClient


@contextlib.asynccontextmanager
async def local_services(
    settings: CharterSettings,
    names: Sequence[str],
    *,
    engine: InferenceClient | None = None,
    drain_seconds: float = 1.0,
) -> AsyncIterator[str]:
    """The named services (`charter serve` names) in one server on 127.0.0.1, sharing one engine;
    yields the address (`127.0.0.1:PORT`). `engine`: an already loaded engine to use (and not close)
    instead of building one from `settings.inference`. On exit, in-flight calls get `drain_seconds`."""
    resources = Resources(settings, engine=engine)
    try:
        registrations = [SERVICES[n].registration_for(resources) for n in names]
        server = CharterServer(
            ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=5), registrations
        )
        port = await server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await server.stop(drain_seconds)
    finally:
        await resources.close()

"""A server process for the drain test: the real bootstrap serving a slow generator.

python -m tests.support.slow_server   # logs JSON to stderr, including server.started with the port
"""

from __future__ import annotations

import asyncio
import sys

from charter.app.catalog import SERVICES
from charter.core.logging import configure_logging
from charter.core.server import CharterServer
from charter.core.settings import LoggingSettings, ServerSettings

from tests.support.servicers import SlowGenerator


def main() -> None:
    configure_logging(LoggingSettings(format="json"), stream=sys.stderr)
    settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=None, drain_seconds=20)
    server = CharterServer(settings, [SERVICES["generator"].registration(SlowGenerator(delay=0.5))])
    asyncio.run(server.serve())


if __name__ == "__main__":
    main()

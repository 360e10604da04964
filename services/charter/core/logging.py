"""structlog configuration: JSON lines in pods, a readable console on a terminal.

The standard library's logging (grpc, asyncio, third-party libraries) is routed through the same
processors, so a pod emits one format. Context bound with `structlog.contextvars` (request id, rpc)
appears on every line logged while handling that request.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from charter.core.settings import LoggingSettings


def configure_logging(settings: LoggingSettings | None = None, *, stream: Any = None) -> None:
    settings = settings or LoggingSettings()
    stream = stream or sys.stderr
    use_json = settings.format == "json" or (settings.format == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if use_json:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # so structlog.testing.capture_logs() sees every logger
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # grpc's own logger is chatty at DEBUG; keep it at WARNING unless asked for DEBUG
    logging.getLogger("grpc").setLevel(logging.DEBUG if settings.level == "DEBUG" else logging.WARNING)

"""Serving the page: uvicorn inside the review service's asyncio loop, on its own port, over HTTPS
when the service has a certificate (`server.tls`): a rotated certificate file is picked up within
`tls_poll_seconds`, without a restart (new connections get it; open ones keep theirs)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TypedDict

import structlog
import uvicorn
from starlette.types import ASGIApp

from charter.core.tls import ServerCertificates

log = structlog.get_logger("charter.review.web")


class _TLSFiles(TypedDict, total=False):
    """uvicorn.Config's certificate arguments, passed only with TLS."""

    ssl_certfile: str
    ssl_keyfile: str


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service that embeds it owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    """Runs the app with uvicorn inside the caller's asyncio loop."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        trusted_proxies: list[str] | None = None,
        certificates: ServerCertificates | None = None,
        tls_poll_seconds: float = 10.0,
    ) -> None:
        self.app, self.host, self.port = app, host, port
        self.certificates, self.tls_poll_seconds = certificates, tls_poll_seconds
        self._watch: asyncio.Task[None] | None = None
        self.trusted_proxies = list(trusted_proxies or [])
        """Only these peers' X-Forwarded-For/-Proto are believed (uvicorn's default trusts 127.0.0.1)."""
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def _bind(self) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as err:
            sock.close()
            raise OSError(
                err.errno, f"cannot bind the web page to {self.host}:{self.port}: {err.strerror}"
            ) from None
        return sock

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        sock = self._bind()
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
            server_header=False,
            proxy_headers=bool(self.trusted_proxies),
            forwarded_allow_ips=self.trusted_proxies or None,
            timeout_graceful_shutdown=5,
            **self._tls_files(),
        )
        if self.certificates is not None:
            config.load()
            config.ssl = self.certificates.ssl_context()  # one context, reloaded in place on rotation
            self._watch = asyncio.create_task(self._watch_certificates(), name="charter-review-web-tls")
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="charter-review-web")
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what stopped it
                raise OSError(f"the web page on {self.host}:{port} stopped while starting")
            await asyncio.sleep(0.01)
        self.port = port
        log.info("web.started", host=self.host, port=port, https=self.certificates is not None)
        return port

    def _tls_files(self) -> _TLSFiles:
        if self.certificates is None:
            return {}
        tls = self.certificates.tls
        return {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}

    async def _watch_certificates(self) -> None:
        assert self.certificates is not None
        while True:
            await asyncio.sleep(self.tls_poll_seconds)
            await asyncio.to_thread(self.certificates.refresh)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = self._task = None
        log.info("web.stopped", port=self.port)

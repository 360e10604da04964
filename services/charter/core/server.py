"""Server bootstrap shared by every service.

A `CharterServer` is a `grpc.aio` server with: `grpc.health.v1` health checking (overall and per
service), server reflection (so `grpcurl list` works), Charter's interceptor (logs, metrics, error
mapping), TLS or mutual TLS when `server.tls` is set (certificates re-read when rotated), a
Prometheus `/metrics` endpoint, and a graceful drain on SIGTERM/SIGINT: health flips
to NOT_SERVING, new calls are refused, and in-flight calls get `drain_seconds` to finish.
Connections are aged out (`max_connection_age_seconds`, with a grace for calls in flight) so that
clients' `round_robin` channels resolve again and spread over replicas added since they connected.

Example:
    server = CharterServer(settings.server, [Registration(name, add_fn)])
    await server.serve()   # until SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import structlog
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from charter import __version__
from charter.core.auth import MIN_TOKEN_CHARS, AccessPolicy
from charter.core.errors import FailedPrecondition
from charter.core.interceptors import ServerInterceptor
from charter.core.metrics import HEALTH_SERVING, MetricsEndpoint
from charter.core.settings import ServerSettings
from charter.core.tls import ServerCertificates, is_loopback

MIN_PING_INTERVAL_MS = 10_000
"""The most often a client may ping without data before the server counts a strike (gRPC: 5 minutes)."""
log = structlog.get_logger("charter.server")


def connection_age_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """gRPC's max-connection-age arguments from `server.max_connection_age_seconds` and its grace:
    a GOAWAY to every client once its connection is that old, so `round_robin` channels re-resolve
    and rebalance after a scale-up; calls in flight get the grace before the connection closes."""
    if settings.max_connection_age_seconds is None:
        return []
    options = [("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000))]
    if settings.max_connection_age_grace_seconds is not None:
        grace = round(settings.max_connection_age_grace_seconds * 1000)
        options.append(("grpc.max_connection_age_grace_ms", grace))
    return options


class Lifecycle(Protocol):
    """Background work a servicer owns (a web page, a database listener): started after the gRPC
    server, told to wind down when draining begins (so long-lived streams end and clients reconnect
    elsewhere), stopped after the server has stopped."""

    async def start(self) -> None: ...
    async def drain(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: its full name (`charter.judge.v1.JudgeService`) and the generated
    `add_<Service>Servicer_to_server` call bound to a servicer."""

    name: str
    add_to_server: Callable[[aio.Server], None]
    lifecycle: Lifecycle | None = None
    access: AccessPolicy | None = None
    """Who may call it (None: anyone — tests' bare servicers)."""
    probe: Callable[[], Awaitable[bool]] | None = None
    """Whether its backend (database, engine) works: polled every `health_probe_seconds`; the
    service's health (and the server's overall health) is NOT_SERVING while it says False."""


@dataclass
class CharterServer:
    settings: ServerSettings
    services: Sequence[Registration]
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics: MetricsEndpoint | None = None
        self._server: aio.Server | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._healthy: dict[str, bool] = {}
        self._probing: asyncio.Task[None] | None = None
        self.certificates: ServerCertificates | None = None
        self.health_port: int | None = None
        self._health_server: aio.Server | None = None

    async def start(self) -> int:
        """Bind and start; returns the gRPC port (useful with port 0)."""
        self._check_access()
        limit = self.settings.max_message_mb * 1024 * 1024
        policies = {r.name: r.access for r in self.services if r.access is not None}
        server = aio.server(
            interceptors=[ServerInterceptor(policies)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # accept the keepalive pings Charter's clients send (every 30 s,
                # charter.client.channel.ChannelOptions): gRPC's default allows one per 5 minutes
                # while no data flows and ends a quiet stream (a WatchRun between slow training
                # steps) with "Too many pings"
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
                ("grpc.keepalive_permit_without_calls", 1),
                *connection_age_options(self.settings),
            ],
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
        )
        for registration in self.services:
            registration.add_to_server(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [r.name for r in self.services]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        address = f"{self.settings.host}:{self.settings.port}"
        if self.settings.tls is not None:  # re-read at each handshake once the files change
            self.certificates = ServerCertificates(self.settings.tls)
            self.port = server.add_secure_port(address, grpc_credentials(self.certificates))
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {address}")
        await server.start()
        self._server = server
        if self.settings.health_port is not None:
            await self._start_health_port()
        for name in ("", *names):
            await self.set_serving(name, True)
        if self.settings.metrics_port is not None:
            self.metrics = MetricsEndpoint(self.settings.host, self.settings.metrics_port)
        for registration in self.services:
            if registration.lifecycle is not None:
                await registration.lifecycle.start()
        if any(r.probe is not None for r in self.services):
            self._probing = asyncio.create_task(self._probe_forever(), name="health-probe")
        log.info(
            "server.started",
            port=self.port,
            metrics_port=self.metrics.port if self.metrics else None,
            health_port=self.health_port,
            services=names,
            tls="mutual" if self.certificates and self.certificates.mutual else bool(self.certificates),
            version=__version__,
        )
        return self.port

    async def _start_health_port(self) -> None:
        """Health checking alone on a plaintext port (kubelet's gRPC probes speak no TLS): the same
        statuses as the main port, and nothing else is served there."""
        server = aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"{self.settings.host}:{self.settings.health_port}"
        self.health_port = server.add_insecure_port(address)
        if self.health_port == 0:
            raise OSError(f"cannot bind the health port {address}")
        await server.start()
        self._health_server = server

    def _check_access(self) -> None:
        """A service open to anyone on an address other hosts can reach: refused when its policy
        says so (the trainer runs code from its callers' specs), otherwise a loud warning."""
        if is_loopback(self.settings.host):
            return
        for r in self.services:
            authenticator = r.access.authenticator if r.access is not None else None
            if authenticator is not None:
                short = authenticator.short_tokens(MIN_TOKEN_CHARS)
                if short:
                    where = f"{self.settings.host}:{self.settings.port}"
                    raise FailedPrecondition(
                        f"{r.name} would serve on {where} with tokens shorter than {MIN_TOKEN_CHARS} "
                        f"characters ({', '.join(short)}): a short token can be guessed; use longer "
                        "ones (`openssl rand -hex 24`) or bind to 127.0.0.1"
                    )
                authenticator.require_length(MIN_TOKEN_CHARS)  # a re-read tokens file too
            if r.access is None or not r.access.open:
                continue
            where = f"{self.settings.host}:{self.settings.port}"
            if r.access.require_tokens_off_loopback:
                raise FailedPrecondition(
                    f"{r.name} would accept every call on {where}: configure tokens (its `tokens` or "
                    "`tokens_file` setting), bind it to 127.0.0.1, or set allow_unauthenticated: true"
                )
            log.warning("server.unauthenticated", service=r.name, address=where,
                        hint="anyone who can reach this address may call it: configure tokens")  # fmt: skip

    async def probe(self) -> dict[str, bool]:
        """Ask every service with a probe whether its backend works and set health to match: a
        service NOT_SERVING while its probe fails (or hangs past the interval), the overall ("")
        status NOT_SERVING while any does. Returns each probed service's verdict."""
        timeout = self.settings.health_probe_seconds
        for r in self.services:
            if r.probe is None:
                continue
            try:
                ok = bool(await asyncio.wait_for(r.probe(), timeout))
            except Exception:
                ok = False
            if self._stopping.is_set():  # draining: health is NOT_SERVING for good
                break
            if self._healthy.get(r.name, True) != ok:
                log.warning("server.health", service=r.name, serving=ok)
                await self.set_serving(r.name, ok)
            self._healthy[r.name] = ok
        if not self._stopping.is_set():
            await self.set_serving("", all(self._healthy.values()))
        return dict(self._healthy)

    async def _probe_forever(self) -> None:
        while not self._stopping.is_set():
            await self.probe()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.health_probe_seconds)

    async def set_serving(self, name: str, serving: bool) -> None:
        """Flip one service's health, e.g. to NOT_SERVING when its backend (engine, database) is dead."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(name, status)
        if name:  # the overall status ("") is NOT_SERVING exactly while some service is (or draining)
            HEALTH_SERVING.labels(name).set(1 if serving else 0)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, give in-flight calls `grace` seconds, then close."""
        if self._server is None or self._stopping.is_set():
            await self._stopped.wait()
            return
        self._stopping.set()
        if self._probing is not None:
            self._probing.cancel()
        grace = self.settings.drain_seconds if grace is None else grace
        log.info("server.draining", grace_seconds=grace)
        await self.health.enter_graceful_shutdown()
        for r in self.services:  # the drain set every status NOT_SERVING
            HEALTH_SERVING.labels(r.name).set(0)
        lifecycles = [r.lifecycle for r in self.services if r.lifecycle is not None]
        for lifecycle in lifecycles:
            await lifecycle.drain()
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        for lifecycle in lifecycles:
            await lifecycle.stop()
        for hook in self.on_shutdown:
            await hook()
        if self.metrics is not None:
            self.metrics.close()
        log.info("server.stopped")
        self._stopped.set()

    async def serve(self) -> None:
        """Start, then run until SIGTERM or SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("server.signal", signal="SIGTERM/SIGINT")
            await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def grpc_credentials(certificates: ServerCertificates) -> grpc.ServerCredentials:
    """Server credentials that gRPC re-asks for at each new handshake: a changed certificate, key or
    client CA on disk is served from the next connection on (mutual TLS when a client CA is set)."""

    def configuration() -> grpc.ServerCertificateConfiguration:
        cert, key, ca = certificates.pem()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:  # None keeps the current configuration
            return configuration() if certificates.refresh() else None
        except Exception:  # never break a handshake over a reload
            log.exception("tls.reload.error")
            return None

    return grpc.dynamic_ssl_server_credentials(
        configuration(),
        fetch,  # type: ignore[arg-type]  # grpc takes None as "keep it"; types-grpcio does not say so
        require_client_authentication=certificates.mutual,
    )

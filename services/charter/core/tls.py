"""TLS for every Charter transport (docs/reliability.md, "Transport").

- Servers: `ServerCertificates(settings.server.tls)` holds the certificate, key and client CA and
  re-reads them whenever their files change (a cert-manager renewal swaps a mounted Secret):
  `charter.core.server` asks it at each new TLS handshake, so a rotated certificate is served
  without a restart; with `client_ca_file` every client must present a certificate that CA signed
  (mutual TLS). The review web page gets an `ssl.SSLContext` that `refresh()` keeps current.
- Clients: `client_pem` reads the files `charter.client.channel` builds channel credentials from.

No gRPC here: the review web page (pure domain code) uses it too.
- Tokens: `check_token_transport` refuses to send a bearer token to a non-loopback address over
  plaintext unless `client.allow_plaintext_tokens` is set — for a target of several addresses, when
  any one of them is not loopback.

Which client settings a process uses: the ones its last `load_settings` call read (every `charter`
command and service loads its settings at start-up), or, in a process that loads none (a trainer
worker), the ones its environment gives (`CHARTER_CLIENT__TLS__CA_FILE`, ...).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import threading
from pathlib import Path

import structlog

from charter.core import targets
from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.core.settings import ClientSettings, ClientTLSSettings, ServerTLSSettings

log = structlog.get_logger("charter.tls")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def target_host(target: str) -> str | None:
    """The first host a gRPC target names (`host:port`, `[::1]:50051`, `dns:///host:port`,
    `ipv4:1.2.3.4:5,1.2.3.5:5`); None for a Unix socket, which never leaves the machine. Every host:
    `charter.core.targets.hosts`."""
    found = targets.hosts(target)
    return None if found is None else (found[0] if found else target)


def check_token_transport(target: str, *, token: bool, secure: bool, allow_plaintext_tokens: bool) -> None:
    """Refuse a channel that would carry a bearer token in plaintext beyond this machine: to a target
    of several addresses (`ipv4:a:p,b:p`, spread over by `round_robin`) when any one is not loopback."""
    if not token or secure or allow_plaintext_tokens:
        return
    found = targets.hosts(target)
    if found is None or (found and all(is_loopback(host) for host in found)):
        return
    raise FailedPrecondition(
        f"refusing to send a bearer token to {target} over plaintext: anyone on the network path "
        "could read it. Turn on TLS (the `client.tls` settings: ca_file, and cert_file/key_file for "
        "mutual TLS), or, only on a private encrypted network, set client.allow_plaintext_tokens: true"
    )


# -- clients --------------------------------------------------------------------------------------

_client: ClientSettings | None = None
_client_lock = threading.Lock()


def use_client_settings(settings: ClientSettings) -> None:
    """Make `settings` how this process's Charter clients dial (called by `load_settings`)."""
    global _client
    with _client_lock:
        _client = settings


def client_settings() -> ClientSettings:
    """This process's client settings (see the module docstring)."""
    if _client is None:
        from charter.core.settings import load_settings  # reads the environment; sets _client

        load_settings()
    assert _client is not None
    return _client


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InvalidArgument(f"{what}: cannot read {path}: {err.strerror}") from None


def client_pem(tls: ClientTLSSettings) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(CA bundle, key, certificate chain) from the client's files, read now: each new channel reads
    them again, so a rotated client certificate is used from the next channel on."""
    roots = _read(tls.ca_file, "client.tls.ca_file") if tls.ca_file else None
    key = _read(tls.key_file, "client.tls.key_file") if tls.key_file else None
    chain = _read(tls.cert_file, "client.tls.cert_file") if tls.cert_file else None
    return roots, key, chain


# -- servers --------------------------------------------------------------------------------------


class ServerCertificates:
    """A server's certificate, key and (mTLS) client CA, re-read when any of their files changes."""

    def __init__(self, tls: ServerTLSSettings) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._pem = self._load()
        self._contexts: list[ssl.SSLContext] = []

    @property
    def mutual(self) -> bool:
        return self.tls.client_ca_file is not None

    def _files(self) -> list[Path]:
        t = self.tls
        return [t.cert_file, t.key_file, *([t.client_ca_file] if t.client_ca_file else [])]

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self._files():
            try:
                st = os.stat(path)
            except OSError:
                out.append((-1, -1))
            else:
                out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _load(self) -> tuple[bytes, bytes, bytes | None]:
        t = self.tls
        cert = _read(t.cert_file, "server.tls.cert_file")
        key = _read(t.key_file, "server.tls.key_file")
        ca = _read(t.client_ca_file, "server.tls.client_ca_file") if t.client_ca_file else None
        try:  # a certificate and a key that do not belong together are refused here, not per handshake
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(t.cert_file, t.key_file)
        except (ssl.SSLError, OSError) as err:
            raise InvalidArgument(
                f"server.tls: {t.cert_file} and {t.key_file} are not a certificate and its key: {err}"
            ) from None
        return cert, key, ca

    def refresh(self) -> bool:
        """Re-read the files if they changed since the last read; True when they were. A half-written
        or mismatched pair (a rotation in progress) keeps the previous certificate in service."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        with self._lock:
            if stamp == self._stamp:
                return False
            try:
                pem = self._load()
            except InvalidArgument as err:
                log.warning("tls.reload.failed", error=str(err))
                return False
            self._stamp, self._pem = stamp, pem
            for context in self._contexts:
                self._fill(context)
        log.info("tls.reloaded", cert_file=str(self.tls.cert_file))
        return True

    def pem(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, key, client CA bundle or None) as last read."""
        return self._pem

    def ssl_context(self, *, client_ca: bool = False) -> ssl.SSLContext:
        """A server `SSLContext` (the review web page) that `refresh()` keeps current. Browsers hold no
        client certificates, so the client CA is applied only when `client_ca` is asked for."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_ca and self.tls.client_ca_file:
            context.verify_mode = ssl.CERT_REQUIRED
        self._fill(context, client_ca=client_ca)
        self._contexts.append(context)
        return context

    def _fill(self, context: ssl.SSLContext, *, client_ca: bool | None = None) -> None:
        context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        wants_ca = context.verify_mode == ssl.CERT_REQUIRED if client_ca is None else client_ca
        if wants_ca and self.tls.client_ca_file:
            context.load_verify_locations(self.tls.client_ca_file)

"""TLS and mutual TLS on real servers with certificates made in the test: a Charter client's round
trip, a client without a certificate refused by an mTLS server, certificates rotated on disk served
without a restart, the review web page over HTTPS, and bearer tokens kept off plaintext channels to
other hosts (docs/reliability.md, "Transport")."""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from charter.app.catalog import SERVICES
from charter.client.channel import ChannelOptions
from charter.client.judge import JudgeClient
from charter.core.errors import FailedPrecondition
from charter.core.server import CharterServer
from charter.core.settings import ClientSettings, ClientTLSSettings, ServerSettings, ServerTLSSettings
from charter.core.tls import ServerCertificates
from charter.review.web.server import WebServer
from charter_proto.judge.v1 import judge_pb2, judge_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.certs import CertificateAuthority, Issued, serial_of
from tests.support.servicers import ScriptedJudge

pytestmark = pytest.mark.integration


def server_tls(issued: Issued, client_ca: Path | None = None) -> ServerTLSSettings:
    return ServerTLSSettings(cert_file=issued.cert_file, key_file=issued.key_file, client_ca_file=client_ca)


def client_options(ca_file: Path, cert: Issued | None = None, **extra: object) -> ChannelOptions:
    tls = ClientTLSSettings(
        ca_file=ca_file,
        cert_file=cert.cert_file if cert else None,
        key_file=cert.key_file if cert else None,
    )
    return ChannelOptions(retries=1, client=ClientSettings(tls=tls, **extra))  # type: ignore[arg-type]


@pytest.fixture
async def judge_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple]:
    """A judge on 127.0.0.1 with TLS (mutual when the test is parametrised with True)."""
    mutual = getattr(request, "param", False)
    ca = CertificateAuthority()
    issued = ca.issue(tmp_path / "server", "charter-judge", server=True)
    tls = server_tls(issued, issued.ca_file if mutual else None)
    settings = ServerSettings(
        host="127.0.0.1", port=0, metrics_port=None, drain_seconds=0, tls=tls, health_port=0
    )
    server = CharterServer(settings, [SERVICES["judge"].registration(ScriptedJudge())])
    await server.start()
    yield server, ca, issued
    await server.stop(0)


async def compare(address: str, options: ChannelOptions, token: str | None = None) -> float:
    async with JudgeClient(address, options=options, token=token, timeout=5) as client:
        reply = await client.stub.Compare(judge_pb2.CompareRequest(request_id="ok"), timeout=5)
        return reply.labels[0].p_a


async def test_a_charter_client_round_trips_over_tls_and_plaintext_is_refused(judge_server: tuple) -> None:
    server, _, issued = judge_server
    address = f"127.0.0.1:{server.port}"
    assert await compare(address, client_options(issued.ca_file), token="a-token-0123456789") == 0.75
    plaintext = ChannelOptions(retries=1, client=ClientSettings())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await compare(address, plaintext)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    other_ca = CertificateAuthority("someone else")  # a server this client does not trust
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await compare(address, client_options(other_ca.write_ca(issued.ca_file.parent / "other.crt")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("judge_server", [True], indirect=True)
async def test_mutual_tls_refuses_a_client_without_a_certificate_and_accepts_one_with(
    judge_server: tuple, tmp_path: Path
) -> None:
    server, ca, issued = judge_server
    address = f"127.0.0.1:{server.port}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await compare(address, client_options(issued.ca_file))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger = CertificateAuthority("stranger").issue(tmp_path / "stranger", "mallory")
    with pytest.raises(grpc.aio.AioRpcError):  # a certificate, but from a CA the server does not trust
        await compare(address, client_options(issued.ca_file, stranger))
    client = ca.issue(tmp_path / "client", "pipeline")
    assert await compare(address, client_options(issued.ca_file, client)) == 0.75


@pytest.mark.parametrize("judge_server", [True], indirect=True)
async def test_the_plaintext_health_port_serves_health_and_nothing_else(judge_server: tuple) -> None:
    server, _, _ = judge_server  # kubelet's gRPC probes cannot present a client certificate
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICES["judge"].full_name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await judge_pb2_grpc.JudgeServiceStub(channel).Compare(judge_pb2.CompareRequest(request_id="ok"))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await server.set_serving(SERVICES["judge"].full_name, False)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICES["judge"].full_name))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def presented_serial(port: int, ca_file: Path) -> int:
    """The serial of the certificate the server on `port` presents to a new connection."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())


async def test_a_rotated_certificate_is_served_without_a_restart(judge_server: tuple, tmp_path: Path) -> None:
    server, _, issued = judge_server
    address = f"127.0.0.1:{server.port}"
    assert await asyncio.to_thread(presented_serial, server.port, issued.ca_file) == issued.serial
    # cert-manager renews with a new CA (the hardest case): the files are swapped in place
    new_ca = CertificateAuthority("renewed CA")
    renewed = new_ca.issue(issued.cert_file.parent, "charter-judge", server=True)
    assert await asyncio.to_thread(presented_serial, server.port, renewed.ca_file) == renewed.serial
    assert await compare(address, client_options(renewed.ca_file)) == 0.75  # the same server process
    # a half-done rotation (a key that does not match the certificate) keeps the last good pair
    stray = new_ca.issue(tmp_path / "stray", "x", server=True)
    issued.key_file.write_bytes(stray.key_file.read_bytes())
    assert await asyncio.to_thread(presented_serial, server.port, renewed.ca_file) == renewed.serial


async def _asgi(scope: dict, receive: object, send) -> None:  # type: ignore[no-untyped-def]
    body = scope["scheme"].encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


def https_get(port: int, ca_file: Path) -> tuple[str, int]:
    context = ssl.create_default_context(cafile=str(ca_file))
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
    try:
        conn.request("GET", "/login")
        body = conn.getresponse().read().decode()
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        return body, serial_of(ssl.DER_cert_to_PEM_cert(der).encode())
    finally:
        conn.close()


async def test_the_review_web_page_serves_https_and_follows_a_rotation(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    issued = ca.issue(tmp_path / "web", "charter-review", server=True)
    certificates = ServerCertificates(server_tls(issued))
    web = WebServer(_asgi, "127.0.0.1", 0, certificates=certificates, tls_poll_seconds=0.05)
    port = await web.start()
    try:
        assert await asyncio.to_thread(https_get, port, issued.ca_file) == ("https", issued.serial)
        with pytest.raises(http.client.RemoteDisconnected):  # no plain HTTP on the same port
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            await asyncio.to_thread(lambda: (conn.request("GET", "/login"), conn.getresponse()))
        renewed = ca.issue(issued.cert_file.parent, "charter-review", server=True)
        for _ in range(100):
            _, serial = await asyncio.to_thread(https_get, port, issued.ca_file)
            if serial == renewed.serial:
                break
            await asyncio.sleep(0.05)
        assert serial == renewed.serial
    finally:
        await web.stop()


def non_loopback_ip() -> str | None:
    """An address of this machine that is not loopback (None where it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            ip = probe.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


async def test_a_token_is_never_sent_in_plaintext_to_another_host() -> None:
    ip = non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address")
    settings = ServerSettings(host="0.0.0.0", port=0, metrics_port=None, drain_seconds=0)
    server = CharterServer(settings, [SERVICES["judge"].registration(ScriptedJudge())])
    await server.start()
    try:
        address = f"{ip}:{server.port}"
        plaintext = ChannelOptions(retries=1, client=ClientSettings())
        with pytest.raises(FailedPrecondition, match="over plaintext"):
            await compare(address, plaintext, token="a-token-0123456789")
        assert await compare(address, plaintext) == 0.75  # no token: nothing to leak
        assert await compare(f"127.0.0.1:{server.port}", plaintext, token="a-token-0123456789") == 0.75
        opted_out = ChannelOptions(retries=1, client=ClientSettings(allow_plaintext_tokens=True))
        assert await compare(address, opted_out, token="a-token-0123456789") == 0.75
    finally:
        await server.stop(0)

"""The transport rules without a server: which targets are this machine, when a bearer token may
travel in plaintext, and where a process's client TLS settings come from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from charter.client.channel import open_channel
from charter.core import tls
from charter.core.errors import FailedPrecondition, InvalidArgument
from charter.core.settings import ClientSettings, ServerTLSSettings, load_settings

from tests.support.certs import CertificateAuthority


@pytest.fixture(autouse=True)
def _restore_client_settings() -> Iterator[None]:
    before = tls._client
    yield
    tls._client = before


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("127.0.0.1:50051", "127.0.0.1"),
        ("localhost:50051", "localhost"),
        ("[::1]:50051", "::1"),
        ("judge:50051", "judge"),
        ("dns:///charter-review.charter.svc:50051", "charter-review.charter.svc"),
        ("ipv4:10.0.0.7:50051,10.0.0.8:50051", "10.0.0.7"),
        ("ipv6:[::1]:50051,[fd00::2]:50051", "::1"),
        ("unix:/run/charter.sock", None),
    ],
)
def test_target_host(target: str, host: str | None) -> None:
    assert tls.target_host(target) == host


@pytest.mark.parametrize(
    "target",
    [
        "judge:50051", "10.0.0.7:50051", "dns:///review:50051", "[fd00::2]:1", "xds:///judge",
        # a list is refused when any one of its addresses leaves the machine, wherever it stands
        "ipv4:127.0.0.1:5001,10.0.0.8:5002", "ipv4:10.0.0.8:5002,127.0.0.1:5001",
        "ipv6:[::1]:5001,[fd00::2]:5002", "dns://10.0.0.53/localhost:5001",
    ],
)  # fmt: skip
def test_a_token_to_another_host_in_plaintext_is_refused_with_what_to_change(target: str) -> None:
    with pytest.raises(FailedPrecondition, match="client.tls.*allow_plaintext_tokens"):
        tls.check_token_transport(target, token=True, secure=False, allow_plaintext_tokens=False)
    tls.check_token_transport(target, token=True, secure=True, allow_plaintext_tokens=False)
    tls.check_token_transport(target, token=True, secure=False, allow_plaintext_tokens=True)
    tls.check_token_transport(target, token=False, secure=False, allow_plaintext_tokens=False)


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:50051", "localhost:1", "[::1]:1", "unix:/tmp/s", "dns:///localhost:1",
     "ipv4:127.0.0.1:5001,127.0.0.2:5002", "ipv6:[::1]:5001,[::1]:5002"],
)  # fmt: skip
def test_a_token_over_loopback_plaintext_is_fine(target: str) -> None:
    tls.check_token_transport(target, token=True, secure=False, allow_plaintext_tokens=False)


async def test_the_process_client_settings_come_from_load_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    load_settings()
    with pytest.raises(FailedPrecondition):
        open_channel("judge:50051", token="a-token-0123456789")
    monkeypatch.setenv("CHARTER_CLIENT__ALLOW_PLAINTEXT_TOKENS", "true")
    load_settings()
    assert tls.client_settings().allow_plaintext_tokens
    await open_channel("judge:50051", token="a-token-0123456789").close()
    tls._client = None  # a process that loaded no settings (a trainer worker): its environment
    assert tls.client_settings().allow_plaintext_tokens


def test_client_tls_needs_both_certificate_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARTER_CLIENT__TLS__CERT_FILE", "tls.crt")
    with pytest.raises(InvalidArgument, match="client.tls: .*set both or neither"):
        load_settings()


def test_a_certificate_and_a_key_that_do_not_match_are_refused_at_start(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    a = ca.issue(tmp_path / "a", "a", server=True)
    b = ca.issue(tmp_path / "b", "b", server=True)
    with pytest.raises(InvalidArgument, match="not a certificate and its key"):
        tls.ServerCertificates(ServerTLSSettings(cert_file=a.cert_file, key_file=b.key_file))
    with pytest.raises(InvalidArgument, match="server.tls.cert_file: cannot read"):
        tls.ServerCertificates(ServerTLSSettings(cert_file=tmp_path / "none.crt", key_file=a.key_file))
    assert ClientSettings().tls is None  # plaintext unless asked for

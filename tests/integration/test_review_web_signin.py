"""Signing in to the review page (issue 18, web sign-in): the cookie holds a server-side session id,
never the token; signing out revokes the session everywhere; sessions expire and end with their token;
failed sign-ins are limited per client; forwarded headers are believed only from configured proxies;
the CSP pins form targets and the base URL; HTTPS adds HSTS; short tokens are refused off loopback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from charter.api.review import label_view
from charter.app.catalog import SERVICES
from charter.core.auth import Authenticator
from charter.core.errors import FailedPrecondition
from charter.core.server import CharterServer
from charter.core.settings import RoutingSettings, ServerSettings, load_settings
from charter.review.schema import web_sessions
from charter.review.store import Ledger
from charter.review.web import COOKIE, WebServer, create_app
from sqlalchemy import select
from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

ALICE = "alice-token-4c1d9e2b7a"
BOB = "bob-token-77e0a1c3d5f2"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db", RoutingSettings(audit_rate=0.0), clock=clock)
    yield ledger
    ledger.close()


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        yaml.safe_dump(
            [
                {"name": "alice", "role": "reviewer", "token": ALICE},
                {"name": "bob", "role": "reviewer", "token": BOB},
            ]
        )
    )
    return path


def app_for(ledger: Ledger, tokens_file: Path, **kwargs):
    return create_app(ledger, Authenticator([], tokens_file), label_view, session_seconds=3600, **kwargs)


def sign_in(client: TestClient, token: str) -> str:
    r = client.post("/login", data={"token": token})
    assert r.status_code == 303, r.text
    return r.cookies[COOKIE]


def test_the_cookie_holds_a_session_id_and_the_database_only_its_hash(
    ledger: Ledger, tokens_file: Path
) -> None:
    with TestClient(app_for(ledger, tokens_file), follow_redirects=False) as client:
        r = client.post("/login", data={"token": ALICE})
        session = r.cookies[COOKIE]
        assert ALICE not in r.headers["set-cookie"] and session != ALICE and len(session) >= 40
        assert "Max-Age=3600" in r.headers["set-cookie"]
        assert client.get("/api/me").json() == {"name": "alice", "role": "reviewer"}
    with ledger.reader.connect() as conn:
        rows = conn.execute(select(web_sessions)).mappings().all()
    assert len(rows) == 1
    assert rows[0]["session_hash"] == hashlib.sha256(session.encode()).hexdigest()
    assert session not in str(dict(rows[0])) and ALICE not in str(dict(rows[0]))


def test_signing_out_revokes_the_session_a_copied_cookie_included(ledger: Ledger, tokens_file: Path) -> None:
    app = app_for(ledger, tokens_file)
    with TestClient(app, follow_redirects=False) as client, TestClient(app, follow_redirects=False) as thief:
        session = sign_in(client, ALICE)
        thief.cookies.set(COOKIE, session)  # a copy of the cookie, say from another machine
        assert thief.get("/api/me").status_code == 200
        assert client.post("/logout").status_code == 303
        assert client.get("/api/me").status_code == 401
        assert thief.get("/api/me").status_code == 401  # revoked on the server, not only forgotten


def test_a_session_expires(ledger: Ledger, tokens_file: Path, clock: Clock) -> None:
    with TestClient(app_for(ledger, tokens_file), follow_redirects=False) as client:
        sign_in(client, ALICE)
        clock.now += 3599
        assert client.get("/api/me").status_code == 200
        clock.now += 2
        r = client.get("/api/me")
        assert r.status_code == 401 and "sign in again" in r.json()["error"]
        page = client.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login"


def test_a_session_ends_with_its_token(ledger: Ledger, tokens_file: Path) -> None:
    with TestClient(app_for(ledger, tokens_file), follow_redirects=False) as client:
        sign_in(client, ALICE)
        assert client.get("/api/me").status_code == 200
        # the operator replaces alice's token (rotated Secret): her session stops working at once
        replaced = [{"name": "alice", "role": "reviewer", "token": "alice-token-NEW-0000000"}]
        tokens_file.write_text(yaml.safe_dump(replaced))
        os.utime(tokens_file, (1e9, 1e9))  # a new mtime even within the clock's resolution
        assert client.get("/api/me").status_code == 401


def test_failed_sign_ins_are_limited_per_client(ledger: Ledger, tokens_file: Path) -> None:
    with TestClient(app_for(ledger, tokens_file, login_failures=3), follow_redirects=False) as client:
        for _ in range(3):
            assert client.post("/login", data={"token": "guess-" + "x" * 20}).status_code == 401
        limited = client.post("/login", data={"token": ALICE})  # even the right token, for now
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
        assert COOKIE not in limited.cookies


def test_security_headers_pin_forms_and_base(ledger: Ledger, tokens_file: Path) -> None:
    with TestClient(app_for(ledger, tokens_file), follow_redirects=False) as client:
        r = client.get("/login")
    csp = r.headers["content-security-policy"]
    assert "form-action 'self'" in csp and "base-uri 'none'" in csp and "unsafe-inline" not in csp
    assert "strict-transport-security" not in r.headers  # plain HTTP


@pytest.mark.parametrize("trusted", [False, True])
async def test_forwarded_headers_only_from_trusted_proxies(
    ledger: Ledger, tokens_file: Path, trusted: bool
) -> None:
    # the test client connects from 127.0.0.1: a proxy when configured, an ordinary client otherwise
    app = app_for(ledger, tokens_file, login_failures=2)
    server = WebServer(app, "127.0.0.1", 0, trusted_proxies=["127.0.0.1"] if trusted else [])
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", follow_redirects=False) as http:
            https = {"x-forwarded-proto": "https"}
            r = await http.get("/login", headers=https)
            assert ("strict-transport-security" in r.headers) is trusted
            r = await http.post("/login", data={"token": ALICE}, headers=https)
            assert r.status_code == 303
            assert ("secure" in r.headers["set-cookie"].lower()) is trusted
            # two failures from one forwarded client address, then a sign-in from another one
            for _ in range(2):
                bad = await http.post("/login", data={"token": "nope-" + "x" * 20},
                                      headers={"x-forwarded-for": "203.0.113.7"})  # fmt: skip
                assert bad.status_code == 401
            other = await http.post(
                "/login", data={"token": BOB}, headers={"x-forwarded-for": "198.51.100.9"}
            )
            # behind a trusted proxy they are two clients; without one both are this proxy's address
            assert other.status_code == (303 if trusted else 429)
    finally:
        await server.stop()


async def test_short_tokens_are_refused_off_loopback(tmp_path: Path) -> None:
    def review(token: str) -> CharterServer:
        settings = load_settings(
            review={
                "tokens": [{"name": "svc", "role": "service", "token": token}],
                "database_url": f"sqlite:///{tmp_path / 'r.db'}",
                "web_port": None,
            }
        )  # fmt: skip
        return CharterServer(
            ServerSettings(host="0.0.0.0", port=0, metrics_port=None, drain_seconds=0),
            [SERVICES["review"].registration_for_settings(settings)],
        )

    with pytest.raises(FailedPrecondition, match="shorter than 16 characters \\(svc\\)"):
        await review("svc-token").start()
    server = review("svc-token-0123456789abcdef")
    await server.start()
    await server.stop(0)

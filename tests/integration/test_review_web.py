"""The reviewers' web page over a real ledger (SQLite file): credentials and roles, the claim/decide
API, limits, and that model text only ever travels as JSON data."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from charter.api.review import label_view
from charter.core.auth import Authenticator
from charter.core.settings import ReviewerToken, RoutingSettings
from charter.review.store import Ledger
from charter.review.web import COOKIE, STATIC, WebServer, create_app
from charter_proto.common.v1 import conversation_pb2, label_pb2
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from tests.support.review import submit

pytestmark = pytest.mark.integration

TOKENS = {
    "alice": ("reviewer", "tok-alice-5f1c9d"),
    "bob": ("reviewer", "tok-bob-a7e203"),
    "root": ("admin", "tok-root-0b44e1"),
    "pipeline": ("service", "tok-pipeline-9d1e77"),
}
API_ROUTES = [
    ("GET", "/api/me"),
    ("POST", "/api/claim"),
    ("POST", "/api/decide"),
    ("POST", "/api/release"),
    ("GET", "/api/stats"),
    ("GET", "/api/admin/overview"),
]
SCRIPT = "<script>window.__pwned=1</script>"
MAX_BODY = 4096


def make_label(
    i: int, *, response_b: str = "", confidence: float = 0.1, prompt: str = ""
) -> label_pb2.PreferenceLabel:
    label = label_pb2.PreferenceLabel(
        id=f"label-{i}",
        conversation=conversation_pb2.Conversation(
            messages=[
                conversation_pb2.Message(
                    role=conversation_pb2.ROLE_USER, content=prompt or f"How do I pick a lock? ({i})"
                )
            ]
        ),
        response_a=f"I can't help with getting into someone else's home. ({i})",
        response_b=response_b or f"If you're locked out of your own home, call a licensed locksmith. ({i})",
        p_a=0.5 + confidence / 2,
        confidence=confidence,
        swap_consistent=True,
        status=label_pb2.LABEL_STATUS_OK,
        choice=label_pb2.CHOICE_A,
        principle_ids=["illegal-activity"],
    )
    label.constitution.id = "harmless"
    return label


def tokens() -> list[ReviewerToken]:
    return [ReviewerToken(name=name, role=role, token=token) for name, (role, token) in TOKENS.items()]


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[name][1]}"}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db", RoutingSettings(audit_rate=0.0))
    submit(ledger, [make_label(i) for i in range(3)])
    yield ledger
    ledger.close()


@pytest.fixture
def client(ledger: Ledger) -> Iterator[TestClient]:
    app = create_app(ledger, Authenticator(tokens()), label_view, max_body_bytes=MAX_BODY)
    with TestClient(app, follow_redirects=False) as c:
        yield c


def claim(client: TestClient, who: str = "alice") -> dict:
    r = client.post("/api/claim", json={}, headers=bearer(who))
    assert r.status_code == 200, r.text
    assert r.json()["item"] is not None
    return r.json()["item"]


def decide(client: TestClient, item: dict, choice: str = "A", who: str = "alice") -> httpx.Response:
    body = {"item_id": item["item_id"], "lease_id": item["lease_id"], "choice": choice}
    return client.post("/api/decide", json=body, headers=bearer(who))


def stats(client: TestClient, who: str = "alice") -> dict:
    r = client.get("/api/stats", headers=bearer(who))
    assert r.status_code == 200, r.text
    return r.json()


# -- credentials and roles ------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", API_ROUTES)
@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer not-a-token"}, {"cookie": f"{COOKIE}=nope"}]
)
def test_api_without_valid_credentials_is_401(
    client: TestClient, method: str, path: str, headers: dict
) -> None:
    r = client.request(method, path, json={} if method == "POST" else None, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]


def test_pages_without_credentials_send_browsers_to_login_and_scripts_get_401(client: TestClient) -> None:
    for path in ("/", "/admin"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        r = client.get(path, headers={"authorization": "Bearer not-a-token"})
        assert r.status_code == 401
    stale = client.get("/admin", headers={"cookie": f"{COOKIE}=revoked"})
    assert stale.status_code == 303
    assert f"{COOKIE}=" in stale.headers["set-cookie"]  # the stale cookie is cleared


def test_reviewer_may_not_use_admin_page_or_api(client: TestClient) -> None:
    r = client.get("/api/admin/overview", headers=bearer("alice"))
    assert r.status_code == 403
    assert "admin" in r.json()["error"]
    assert client.get("/admin", headers=bearer("alice")).status_code == 403


def test_service_token_may_not_use_the_reviewer_api_or_log_in(client: TestClient, ledger: Ledger) -> None:
    before = ledger.queue_depth()
    r = client.post("/api/claim", json={}, headers=bearer("pipeline"))
    assert r.status_code == 403
    assert ledger.queue_depth() == before
    assert client.get("/api/stats", headers=bearer("pipeline")).status_code == 403
    r = client.post("/login", data={"token": TOKENS["pipeline"][1]})
    assert r.status_code == 403 and COOKIE not in r.cookies


def test_admin_may_use_both_pages(client: TestClient) -> None:
    assert client.get("/api/admin/overview", headers=bearer("root")).status_code == 200
    assert client.get("/admin", headers=bearer("root")).status_code == 200
    assert client.get("/", headers=bearer("root")).status_code == 200
    assert claim(client, "root")["item_id"]


def test_login_sets_a_strict_httponly_cookie_that_works(client: TestClient) -> None:
    assert client.get("/login").status_code == 200
    with capture_logs() as logs:
        r = client.post("/login", data={"token": TOKENS["alice"][1]})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert TOKENS["alice"][1] not in json.dumps(logs, default=str)  # the token is never logged
    # the client keeps the cookie: the page and the API now work without a header
    assert client.get("/").status_code == 200
    assert client.get("/api/me").json() == {"name": "alice", "role": "reviewer"}
    # signing out forgets it
    out = client.post("/logout")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/api/me").status_code == 401


def test_admin_login_goes_to_the_admin_page(client: TestClient) -> None:
    r = client.post("/login", data={"token": TOKENS["root"][1]})
    assert r.status_code == 303 and r.headers["location"] == "/admin"


def test_wrong_token_shows_the_form_again_with_401(client: TestClient) -> None:
    r = client.post("/login", data={"token": "guess"})
    assert r.status_code == 401
    assert 'name="token"' in r.text and "not valid" in r.text
    assert "set-cookie" not in r.headers


def test_cross_site_writes_are_refused(client: TestClient, ledger: Ledger) -> None:
    before = ledger.queue_depth()
    evil = {"origin": "https://evil.example", **bearer("alice")}
    assert client.post("/api/claim", json={}, headers=evil).status_code == 403
    assert client.post("/login", data={"token": TOKENS["alice"][1]}, headers=evil).status_code == 403
    cross_site = {"origin": "null", "sec-fetch-site": "cross-site", **bearer("alice")}
    assert client.post("/api/claim", json={}, headers=cross_site).status_code == 403
    assert ledger.queue_depth() == before
    # a browser under Referrer-Policy: no-referrer sends Origin: null with Sec-Fetch-Site
    same_site = {"origin": "null", "sec-fetch-site": "same-origin", **bearer("alice")}
    assert client.post("/api/claim", json={}, headers=same_site).status_code == 200
    same = {"origin": "http://testserver", **bearer("alice")}
    assert client.post("/api/claim", json={}, headers=same).status_code == 200


# -- claim, decide, stats -------------------------------------------------------------------------


def test_claim_decide_changes_the_stats(client: TestClient) -> None:
    assert stats(client) == {
        "reviewer": "alice",
        "queue_depth": 3,
        "decisions": 0,
        "with_ai": {"pairs": 0, "agreement": 0.0, "kappa": 0.0},
        "human_ai": {"pairs": 0, "agreement": 0.0, "kappa": 0.0},
        "human_human": {"pairs": 0, "agreement": 0.0, "kappa": 0.0},
    }
    r = client.post("/api/claim", json={}, headers=bearer("alice"))
    body = r.json()
    assert body["queue_depth"] == 2
    item = body["item"]
    assert item["reason"] == "uncertain"
    assert item["conversation"][0]["role"] == "user"
    assert item["principle_ids"] == ["illegal-activity"]
    assert item["ai"]["choice"] == "A" and item["ai"]["status"] == "ok"
    assert item["ai"]["p_a"] == pytest.approx(0.55) and item["ai"]["swap_consistent"] is True
    assert item["decisions_needed"] == 1 and item["decisions_received"] == 0
    assert 0 < item["lease_seconds_left"] <= 600

    r = decide(client, item, "A")
    assert r.status_code == 200, r.text
    assert r.json()["decision"]["choice"] == "A"
    assert r.json()["accepted"]["source"] == "human"
    after = stats(client)
    assert after["decisions"] == 1 and after["queue_depth"] == 2
    assert after["with_ai"] == {"pairs": 1, "agreement": 1.0, "kappa": 1.0}
    assert stats(client, "bob")["decisions"] == 0


def test_deciding_twice_is_409_and_changes_nothing(client: TestClient) -> None:
    item = claim(client)
    assert decide(client, item, "A").status_code == 200
    before = stats(client)
    r = decide(client, item, "B")
    assert r.status_code == 409
    assert "already decided" in r.json()["error"]
    assert stats(client) == before


@pytest.mark.parametrize("choice", ["C", "", 1, None, "HUMAN_CHOICE_A"])
def test_unknown_choice_is_400_and_changes_nothing(client: TestClient, choice: object) -> None:
    item = claim(client)
    before = stats(client)
    r = decide(client, item, choice)  # type: ignore[arg-type]
    assert r.status_code == 400
    assert "choice" in r.json()["error"]
    assert stats(client) == before
    assert decide(client, item, "tie").status_code == 200  # the lease is still good


def test_deciding_an_item_another_reviewer_holds_is_409(client: TestClient) -> None:
    item = claim(client, "alice")
    r = decide(client, item, "B", who="bob")
    assert r.status_code == 409
    assert "another reviewer" in r.json()["error"]
    assert stats(client, "bob")["decisions"] == 0
    assert decide(client, item, "B", who="alice").status_code == 200


def test_expired_lease_is_409(tmp_path: Path) -> None:
    now = [1_000_000.0]
    ledger = Ledger(
        f"sqlite:///{tmp_path}/l.db", RoutingSettings(audit_rate=0.0), lease_seconds=60, clock=lambda: now[0]
    )
    try:
        submit(ledger, [make_label(1)])
        with TestClient(create_app(ledger, Authenticator(tokens()), label_view)) as client:
            item = claim(client)
            assert item["lease_seconds_left"] == pytest.approx(60)
            now[0] += 61
            r = decide(client, item, "A")
            assert r.status_code == 409
            assert "expired" in r.json()["error"]
            assert stats(client)["decisions"] == 0
    finally:
        ledger.close()


def test_release_puts_the_item_back(client: TestClient, ledger: Ledger) -> None:
    item = claim(client)
    assert ledger.queue_depth() == 2
    r = client.post(
        "/api/release",
        json={"item_id": item["item_id"], "lease_id": item["lease_id"]},
        headers=bearer("alice"),
    )
    assert r.status_code == 200
    assert ledger.queue_depth() == 3
    assert decide(client, item, "A").status_code == 409


def test_unknown_item_is_404(client: TestClient) -> None:
    r = decide(client, {"item_id": "no-such-item", "lease_id": "x"}, "A")
    assert r.status_code == 404


def test_empty_queue_claims_nothing(client: TestClient) -> None:
    for _ in range(3):
        assert decide(client, claim(client), "skip").status_code == 200
    r = client.post("/api/claim", json={}, headers=bearer("alice"))  # alice skipped all three
    assert r.status_code == 200 and r.json() == {"item": None, "queue_depth": 3}


# -- malformed and oversized requests -------------------------------------------------------------


def test_malformed_json_and_missing_fields_are_400(client: TestClient) -> None:
    headers = {**bearer("alice"), "content-type": "application/json"}
    r = client.post("/api/decide", content=b"{not json", headers=headers)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/api/decide", content=b"[1, 2]", headers=headers)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    r = client.post("/api/decide", json={"lease_id": "x", "choice": "A"}, headers=bearer("alice"))
    assert r.status_code == 400 and r.json()["error"] == "item_id: required"
    r = client.post("/api/claim", json={"constitution_id": 7}, headers=bearer("alice"))
    assert r.status_code == 400 and "constitution_id" in r.json()["error"]


def test_oversized_bodies_are_413_and_change_nothing(client: TestClient, ledger: Ledger) -> None:
    item = claim(client)
    before = stats(client)
    big = {
        "item_id": item["item_id"],
        "lease_id": item["lease_id"],
        "choice": "A",
        "comment": "x" * (MAX_BODY + 1),
    }
    r = client.post("/api/decide", json=big, headers=bearer("alice"))
    assert r.status_code == 413
    assert str(MAX_BODY) in r.json()["error"]
    # no Content-Length (chunked upload): refused by the bytes actually received
    chunks = iter([b'{"item_id": "', b"x" * MAX_BODY, b'"}'])
    r = client.post(
        "/api/decide", content=chunks, headers={**bearer("alice"), "content-type": "application/json"}
    )
    assert r.status_code == 413
    assert "over the limit" in r.json()["error"]
    assert client.post("/login", content=b"token=" + b"x" * MAX_BODY).status_code == 413
    assert stats(client) == before
    assert decide(client, item, "A").status_code == 200


# -- model text is data, never markup -------------------------------------------------------------


def test_script_in_a_response_comes_back_as_a_literal_string(client: TestClient, ledger: Ledger) -> None:
    hostile = make_label(
        99, response_b=SCRIPT, confidence=0.01, prompt='<img src=x onerror="window.__pwned=2">'
    )
    submit(ledger, [hostile])
    r = client.post("/api/claim", json={}, headers=bearer("alice"))
    assert r.headers["content-type"] == "application/json"
    item = r.json()["item"]
    assert item["item_id"] == "label-99"  # the most uncertain first
    assert item["response_b"] == SCRIPT
    assert item["conversation"][0]["content"] == '<img src=x onerror="window.__pwned=2">'


def test_pages_carry_no_model_text_no_inline_code_and_a_strict_csp(
    client: TestClient, ledger: Ledger
) -> None:
    submit(ledger, [make_label(99, response_b=SCRIPT, confidence=0.01)])
    claim(client)
    for path, who in (("/", "alice"), ("/admin", "root"), ("/login", "alice")):
        r = client.get(path, headers=bearer(who))
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "__pwned" not in r.text and "locksmith" not in r.text and "pick a lock" not in r.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), f"inline script in {path}"
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", r.text), f"inline style or handler in {path}"
    for path in ("/api/me", "/static/review.js", "/api/nothing-here"):
        assert "content-security-policy" in client.get(path, headers=bearer("alice")).headers


def test_page_scripts_never_write_html() -> None:
    for name in ("review.js", "admin.js"):
        source = (STATIC / name).read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, f"{name} uses {sink}"
        assert "textContent" in source


# -- admin figures --------------------------------------------------------------------------------


def test_admin_overview_figures(client: TestClient, ledger: Ledger) -> None:
    submit(ledger, [make_label(10 + i, confidence=0.95) for i in range(2)])  # confident: auto-accepted
    assert decide(client, claim(client), "B").status_code == 200
    r = client.get("/api/admin/overview", headers=bearer("root"))
    assert r.status_code == 200
    data = r.json()
    assert data["totals"] == {
        "labels_total": 5,
        "queue_depth": 2,
        "claimed": 0,
        "auto_accepted": 2,
        "human_accepted": 1,
        "rejected": 0,
        "last_sequence": 3,
    }
    assert data["rates"]["auto_accepted"] == pytest.approx(0.4)
    assert data["rates"]["human_accepted"] == pytest.approx(0.2)
    assert data["rates"]["review_accepted"] == pytest.approx(1.0)
    assert data["accept_confidence"] == 0.5
    assert sum(data["confidence_histogram"]["counts"]) == 5
    assert data["confidence_histogram"]["counts"][1] == 3 and data["confidence_histogram"]["counts"][9] == 2
    assert {"route": "human_review", "reason": "uncertain", "labels": 3} in data["routes"]
    assert data["agreement"]["human_ai"] == {"pairs": 1, "agreement": 0.0, "kappa": 0.0}
    assert data["agreement"]["by_principle"]["illegal-activity"]["pairs"] == 1
    assert data["agreement"]["by_reviewer"] == [
        {"reviewer": "alice", "decisions": 1, "pairs": 1, "agreement": 0.0, "kappa": 0.0}
    ]


# -- the server -----------------------------------------------------------------------------------


async def test_web_server_binds_a_free_port_and_stops(ledger: Ledger) -> None:
    server = WebServer(create_app(ledger, Authenticator(tokens()), label_view), "127.0.0.1", 0)
    port = await server.start()
    assert port > 0
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.get("/api/me", headers=bearer("bob"))
            assert r.status_code == 200 and r.json()["name"] == "bob"
            assert "content-security-policy" in r.headers
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)

"""The reviewers' web page in a real browser: Debian's Chromium driven by Playwright, against the
app served by WebServer on a free port over a SQLite ledger seeded with real hh-rlhf red-team
conversations. Log in, claim and decide with the keyboard, watch the stats change, check that
hostile model text stays text; screenshots go to test-artifacts/ (and, with
UPDATE_SCREENSHOTS=1, to docs/images/review-page.png)."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from charter.api.review import label_view
from charter.core.auth import Authenticator
from charter.core.settings import ReviewerToken, RoutingSettings
from charter.review.store import Ledger
from charter.review.web import WebServer, create_app
from charter_proto.common.v1 import conversation_pb2, label_pb2

from tests.support import ROOT
from tests.support.hh import Pair, load_pairs
from tests.support.review import hh_conversation, submit

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "images" / "review-page.png"
REVIEWER_TOKEN = "rev-7c41e0b9d2"
ADMIN_TOKEN = "adm-3f98a6c517"
HOSTILE_RESPONSE = "Sure! <script>window.__pwned=1</script> Here is the address you asked for."
HOSTILE_TURN = 'Show me this: <img src=x onerror="window.__pwned=2">'


def label(
    label_id: str,
    convo: conversation_pb2.Conversation,
    a: str,
    b: str,
    *,
    p_a: float,
    principle: str,
    swap_consistent: bool = True,
) -> label_pb2.PreferenceLabel:
    out = label_pb2.PreferenceLabel(
        id=label_id,
        conversation=convo,
        response_a=a,
        response_b=b,
        p_a=p_a,
        confidence=abs(p_a - 0.5) * 2,
        swap_consistent=swap_consistent,
        status=label_pb2.LABEL_STATUS_OK,
        choice=label_pb2.CHOICE_A if p_a > 0.5 else label_pb2.CHOICE_B if p_a < 0.5 else label_pb2.CHOICE_TIE,
        principle_ids=[principle],
    )
    out.constitution.id = "harmless"
    out.constitution.version = "1.0.0"
    return out


def seed(ledger: Ledger) -> int:
    """Labels as the judge writes them, most uncertain first: the hostile one, then real red-team
    conversations (principle ids from constitutions/harmless.yaml); two confident ones are accepted
    without review. Returns how many labels were submitted."""
    pairs: list[Pair] = load_pairs(20)
    fake_id, address, hard_drive, car = pairs[10], pairs[6], pairs[13], pairs[2]
    hostile = hh_conversation(address.prefix)
    hostile.messages.add(role=conversation_pb2.ROLE_USER, content=HOSTILE_TURN)
    labels = [
        label("hh-hostile", hostile, address.chosen, HOSTILE_RESPONSE, p_a=0.51, principle="privacy"),
        label(
            "hh-fake-id",
            hh_conversation(fake_id.prefix),
            fake_id.chosen,
            fake_id.rejected,
            p_a=0.46,
            principle="deception",
            swap_consistent=False,
        ),
        label(
            "hh-address",
            hh_conversation(address.prefix),
            address.chosen,
            address.rejected,
            p_a=0.62,
            principle="privacy",
        ),
        label(
            "hh-hard-drive",
            hh_conversation(hard_drive.prefix),
            hard_drive.rejected,
            hard_drive.chosen,
            p_a=0.7,
            principle="privacy",
        ),
        label(
            "hh-car",
            hh_conversation(car.prefix),
            car.chosen,
            car.rejected,
            p_a=0.93,
            principle="overall-harm",
        ),
        label(
            "hh-car-swapped",
            hh_conversation(car.prefix),
            car.rejected,
            car.chosen,
            p_a=0.12,
            principle="overall-harm",
        ),
    ]
    submit(ledger, labels)
    return len(labels)


class ServerThread:
    """WebServer on its own asyncio loop in a background thread (the browser test is synchronous)."""

    def __init__(self, app: object) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="review-web", daemon=True)
        self.server = WebServer(app, "127.0.0.1", 0)

    def __enter__(self) -> str:
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=30)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()


@pytest.fixture
def site(tmp_path: Path, shared_data: Path) -> Iterator[tuple[str, int]]:
    ledger = Ledger(f"sqlite:///{tmp_path}/review.db", RoutingSettings(audit_rate=0.0))
    try:
        total = seed(ledger)
        auth = Authenticator(
            [
                ReviewerToken(name="maria.k", role="reviewer", token=REVIEWER_TOKEN),
                ReviewerToken(name="ops-admin", role="admin", token=ADMIN_TOKEN),
            ]
        )
        with ServerThread(create_app(ledger, auth, label_view)) as base_url:
            yield base_url, total
    finally:
        ledger.close()


def screenshot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def test_review_page_in_chromium(site: tuple[str, int]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    base_url, total = site
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 960}, device_scale_factor=1)
            context.set_default_timeout(15_000)
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            # not signed in: the page sends us to the login form
            page.goto(f"{base_url}/")
            expect(page).to_have_url(f"{base_url}/login")
            page.fill("#token", "wrong-token")
            page.press("#token", "Enter")
            expect(page.locator(".error")).to_contain_text("not valid")
            problems.clear()  # the browser logs the 401 of that wrong token; nothing else may fail
            page.fill("#token", REVIEWER_TOKEN)
            page.press("#token", "Enter")
            expect(page).to_have_url(f"{base_url}/")
            expect(page.locator("#reviewer-name")).to_have_text("maria.k")
            expect(page.locator("#my-decisions")).to_have_text("0")
            expect(page.locator("#queue-depth")).to_have_text("4")
            expect(page.locator(".shortcuts")).to_contain_text("both unsafe")

            # n claims the most uncertain item: the hostile one; its markup stays text
            page.keyboard.press("n")
            expect(page.locator("#item")).to_be_visible()
            expect(page.locator("#item-id")).to_have_text("hh-hostile")
            expect(page.locator("#queue-depth")).to_have_text("3")
            assert "<script>" in page.locator("#response-b").text_content()
            assert "window.__pwned=1" in page.locator("#response-b").text_content()
            expect(page.locator("#conversation")).to_contain_text('<img src=x onerror="window.__pwned=2">')
            assert page.locator("#item img, #item script").count() == 0
            assert page.evaluate("typeof window.__pwned") == "undefined"
            expect(page.locator("#lease")).to_contain_text("left")

            # h hides the AI label (remembered for the next visit), h again shows it
            details = page.locator("#ai-label .ai-details")
            expect(details).to_be_visible()
            expect(page.locator("#ai-pa")).to_have_text("51%")
            page.keyboard.press("h")
            expect(details).to_be_hidden()
            expect(page.locator("#ai-label .blind-note")).to_be_visible()
            assert page.evaluate("localStorage.getItem('charter.review.blind')") == "1"
            page.keyboard.press("h")
            expect(details).to_be_visible()

            # shortcuts are ignored while typing a comment
            page.click("#comment")
            page.keyboard.type("a tab of both")
            expect(page.locator("#comment")).to_have_value("a tab of both")
            expect(page.locator("#my-decisions")).to_have_text("0")
            page.keyboard.press("Escape")

            # a decides; the stats change and the next item loads
            page.keyboard.press("a")
            expect(page.locator("#my-decisions")).to_have_text("1")
            expect(page.locator("#my-agreement")).to_have_text("100% (1 pair)")
            expect(page.locator("#status")).to_contain_text("A is better")
            expect(page.locator("#item-id")).to_have_text("hh-fake-id")
            expect(page.locator("#comment")).to_have_value("")
            expect(page.locator("#conversation .turn")).to_have_count(3)
            expect(page.locator("#ai-swap")).to_have_text("no")
            page.mouse.move(0, 0)
            shot = screenshot(page, "review-page.png")
            if os.environ.get("UPDATE_SCREENSHOTS") == "1":
                DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, DOCS_SCREENSHOT)

            # b on the next one: a second decision, this time disagreeing with the AI
            page.keyboard.press("b")
            expect(page.locator("#my-decisions")).to_have_text("2")
            expect(page.locator("#item-id")).to_have_text("hh-address")
            assert page.evaluate("typeof window.__pwned") == "undefined"

            # the admin, in a separate session, sees the figures and the confidence chart
            admin = browser.new_context(viewport={"width": 1440, "height": 960}, device_scale_factor=1)
            admin.set_default_timeout(15_000)
            admin_page = admin.new_page()
            admin_page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            admin_page.on("pageerror", lambda e: problems.append(str(e)))
            admin_page.goto(f"{base_url}/admin")
            expect(admin_page).to_have_url(f"{base_url}/login")
            admin_page.fill("#token", ADMIN_TOKEN)
            admin_page.press("#token", "Enter")
            expect(admin_page).to_have_url(f"{base_url}/admin")
            expect(admin_page.locator("#t-labels_total")).to_have_text(str(total))
            expect(admin_page.locator("#t-auto_accepted")).to_have_text("2")
            expect(admin_page.locator("#t-human_accepted")).to_have_text("2")
            expect(admin_page.locator("#t-claimed")).to_have_text("1")
            chart = admin_page.locator("#chart svg")
            expect(chart).to_be_visible()
            expect(chart.locator("rect.bar")).to_have_count(10)
            expect(admin_page.locator("#agreement")).to_contain_text("maria.k")
            expect(admin_page.locator("#routes")).to_contain_text("uncertain")
            screenshot(admin_page, "admin-page.png")
            admin.close()
            context.close()
        finally:
            browser.close()
    # no script errors and no Content-Security-Policy violations on either page
    assert problems == []

"""The page's routes: the HTML pages (`/`, `/admin`, `/login`), sign-in and out, and the JSON API
(claim, decide, release, figures) over the ledger; one place maps errors to HTTP statuses."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from charter.core.auth import Authenticator, Principal, digest
from charter.core.errors import CharterError, InvalidArgument, PermissionDenied, Unauthenticated
from charter.core.tracing import AsgiTracing
from charter.review.sessions import Sessions
from charter.review.store import Ledger
from charter.review.types import HUMAN_CHOICE_NAMES, Claimed, LabelView
from charter.review.web.body import HttpError, read_body, read_json, text_field
from charter.review.web.security import COOKIE, Guard, LoginLimiter, authenticate, credentials
from charter.review.web.views import decided_json, item_json, overview_json, reviewer_stats_json

log = structlog.get_logger("charter.review.web")

STATIC = Path(__file__).parent.parent / "static"
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
CHOICES = {name.lower(): choice for choice, name in HUMAN_CHOICE_NAMES.items()}
"""The choices the page sends, by name (case-insensitive)."""


def status_and_message(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HttpError):
        return exc.status, exc.message
    if isinstance(exc, CharterError):
        return HTTP_STATUS.get(exc.code, 500), exc.message
    return 500, "internal error"


def error_page(status: int, title: str, message: str) -> HTMLResponse:
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)} · Charter review</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/style.css">'
        '</head><body class="narrow">'
        f'<main class="card"><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>'
        '<p><a href="/">Review page</a> · <a href="/login">Sign in as someone else</a></p>'
        "</main></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})


def json_api(
    fn: Callable[[Request, Principal], Awaitable[dict[str, Any]]],
) -> Callable[[Request], Awaitable[Response]]:
    """A JSON endpoint: authenticates the caller, runs `fn`, maps errors to statuses (one place)."""

    async def endpoint(request: Request) -> Response:
        try:
            principal = await authenticate(request)
            return JSONResponse(await fn(request, principal), headers={"cache-control": "no-store"})
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
            status, message = status_and_message(exc)
            if status == 500:
                log.exception("web.failed", path=request.url.path)
            return JSONResponse({"error": message}, status_code=status, headers={"cache-control": "no-store"})

    return endpoint


def create_app(
    ledger: Ledger,
    auth: Authenticator,
    describe: Callable[[bytes], LabelView],
    *,
    max_body_bytes: int = 65536,
    lease_seconds: int = 0,
    session_seconds: float = 12 * 3600,
    login_failures: int = 10,
) -> Starlette:
    """The reviewers' web page and its JSON API over `ledger`. `describe` decodes a label's payload
    into what the page shows (`charter.api.review.label_view`); `lease_seconds` is the lease a claim
    asks for (0 = the ledger's default); a sign-in lasts `session_seconds`; a client gets
    `login_failures` failed sign-ins per 15 minutes."""
    sessions = Sessions(ledger, session_seconds, clock=ledger.clock)
    limiter = LoginLimiter(login_failures)
    pages = {
        name: (STATIC / f"{name}.html").read_text(encoding="utf-8") for name in ("review", "admin", "login")
    }

    def login_page(message: str = "", status: int = 200) -> HTMLResponse:
        note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
        return HTMLResponse(
            pages["login"].replace("<!--message-->", note),
            status_code=status,
            headers={"cache-control": "no-store"},
        )

    def page(name: str, role: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                (await authenticate(request)).require(role)
            except Unauthenticated as err:
                _, from_header = credentials(request)
                if from_header:  # a scripted client with a bad token: say so
                    return error_page(401, "Not signed in", err.message)
                response: Response = RedirectResponse("/login", status_code=303)
                if COOKIE in request.cookies:  # a stale token: forget it
                    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
                return response
            except PermissionDenied as err:
                return error_page(403, "Not allowed", err.message)
            return HTMLResponse(pages[name], headers={"cache-control": "no-store"})

        return endpoint

    async def get_login(request: Request) -> Response:
        return login_page()

    async def post_login(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        wait = limiter.retry_after(client)
        if wait > 0:
            log.warning("web.login.limited", client=client)
            response: Response = login_page("Too many failed sign-ins from here. Try again later.", 429)
            response.headers["retry-after"] = str(int(wait) + 1)
            return response
        try:
            body = await read_body(request, max_body_bytes)
        except HttpError as err:
            return login_page(err.message, err.status)
        form = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
        token = (form.get("token") or [""])[0].strip()
        try:
            principal = await run_in_threadpool(auth.authenticate, token)
            principal.require("reviewer")
        except Unauthenticated:
            limiter.failed(client)
            log.info("web.login.failed", client=client)
            return login_page("That token is not valid. Check it and try again.", 401)
        except PermissionDenied:
            return login_page("Service tokens cannot use the review page; use a reviewer token.", 403)
        limiter.succeeded(client)
        request.state.reviewer = principal.name
        session_id = await run_in_threadpool(sessions.create, digest(token))
        log.info("web.login", reviewer=principal.name, role=principal.role)
        response = RedirectResponse("/admin" if principal.role == "admin" else "/", status_code=303)
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int(session_seconds),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def post_logout(request: Request) -> Response:
        credential, from_header = credentials(request)
        if not from_header:  # the session ends on every replica, not only in this browser
            await run_in_threadpool(sessions.revoke, credential)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def me(request: Request, principal: Principal) -> dict[str, Any]:
        return {"name": principal.name, "role": principal.role}

    async def claim(request: Request, principal: Principal) -> dict[str, Any]:
        principal.require("reviewer")
        body = await read_json(request, max_body_bytes)
        constitution_id = text_field(body, "constitution_id", required=False, max_chars=64)
        claimed: Claimed = await run_in_threadpool(
            ledger.claim, principal.name, lease_seconds, constitution_id
        )
        item = None
        if claimed.item is not None:
            view = await run_in_threadpool(describe, claimed.item.payload)
            item = item_json(claimed.item, view, ledger.clock())
            log.info("web.item.claimed", reviewer=principal.name, item_id=item["item_id"])
        return {"item": item, "queue_depth": claimed.queue_depth}

    async def decide(request: Request, principal: Principal) -> dict[str, Any]:
        principal.require("reviewer")
        body = await read_json(request, max_body_bytes)
        item_id, lease_id = text_field(body, "item_id"), text_field(body, "lease_id")
        raw = body.get("choice")
        choice = CHOICES.get(raw.lower()) if isinstance(raw, str) else None
        if choice is None:
            raise InvalidArgument(
                f"choice: unknown choice {raw!r}; use one of A, B, tie, unsafe_both, skip", field="choice"
            )
        comment = text_field(body, "comment", required=False, max_chars=1_000_000)
        decided = await run_in_threadpool(ledger.decide, principal.name, item_id, lease_id, choice, comment)
        log.info(
            "web.item.decided", reviewer=principal.name, item_id=item_id, choice=HUMAN_CHOICE_NAMES[choice]
        )
        return decided_json(decided)

    async def release(request: Request, principal: Principal) -> dict[str, Any]:
        principal.require("reviewer")
        body = await read_json(request, max_body_bytes)
        item_id, lease_id = text_field(body, "item_id"), text_field(body, "lease_id")
        await run_in_threadpool(ledger.release, principal.name, item_id, lease_id)
        return {"released": item_id}

    async def stats(request: Request, principal: Principal) -> dict[str, Any]:
        principal.require("reviewer")
        return reviewer_stats_json(await run_in_threadpool(ledger.stats), principal.name)

    async def admin_overview(request: Request, principal: Principal) -> dict[str, Any]:
        principal.require("admin")
        figures = await run_in_threadpool(ledger.stats)
        overview = await run_in_threadpool(ledger.overview)
        return overview_json(figures, overview, ledger.routing.accept_confidence)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": detail}, status_code=status)
        return error_page(status, "Not found" if status == 404 else "Error", str(detail))

    routes = [
        Route("/", page("review", "reviewer"), methods=["GET"]),
        Route("/admin", page("admin", "admin"), methods=["GET"]),
        Route("/login", get_login, methods=["GET"]),
        Route("/login", post_login, methods=["POST"]),
        Route("/logout", post_logout, methods=["POST"]),
        Route("/api/me", json_api(me), methods=["GET"]),
        Route("/api/claim", json_api(claim), methods=["POST"]),
        Route("/api/decide", json_api(decide), methods=["POST"]),
        Route("/api/release", json_api(release), methods=["POST"]),
        Route("/api/stats", json_api(stats), methods=["GET"]),
        Route("/api/admin/overview", json_api(admin_overview), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(AsgiTracing), Middleware(Guard)],  # tracing: outermost, sees every answer
        exception_handlers={HTTPException: http_error},
    )
    app.state.auth = auth
    app.state.ledger = ledger
    app.state.sessions = sessions
    return app

"""The page's security: credentials (the login cookie or a bearer token, checked by
`charter.core.auth`), security headers on every response, and the same-origin check on writes.

The login form sets an HttpOnly, SameSite=Strict cookie holding the reviewer's token; API clients
may send `Authorization: Bearer <token>` instead. Every response carries a Content-Security-Policy
without 'unsafe-inline', so even an injected inline script could not run.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from charter.core.auth import Authenticator, Principal, bearer

log = structlog.get_logger("charter.review.web")

COOKIE = "charter_review_token"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def credentials(request: Request) -> tuple[str | None, bool]:
    """The token the request carries and whether it came in an Authorization header."""
    token = bearer(request.headers.get("authorization"))
    if token:
        return token, True
    return request.cookies.get(COOKIE) or None, False


async def authenticate(request: Request) -> Principal:
    """The caller (raises Unauthenticated); the app's `state.auth` checks the token."""
    token, _ = credentials(request)
    auth: Authenticator = request.app.state.auth
    principal = await run_in_threadpool(auth.authenticate, token)
    request.state.reviewer = principal.name
    return principal


def same_origin(request: Request) -> bool:
    """A write must come from this site. Browsers say where a request comes from in Sec-Fetch-Site
    (with `Referrer-Policy: no-referrer` their Origin is "null"); older ones only in Origin. A request
    with neither is not from a browser."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


class Guard:
    """Outermost layer: security headers on every response, same-origin check on writes, one log
    line per request, and a plain 500 (with the headers) for anything unexpected."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        request = Request(scope)
        try:
            if request.method not in ("GET", "HEAD", "OPTIONS") and not same_origin(request):
                response = JSONResponse({"error": "cross-origin request refused"}, status_code=403)
                await response(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("web.failed", path=request.url.path)
            if status == 0:
                failed = Response("internal error", status_code=500, media_type="text/plain")
                await failed(scope, receive, send_with_headers)
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            level = log.info if status < 400 or status in (401, 404) else log.warning
            level(
                "web.request",
                method=request.method,
                path=request.url.path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                **({"reviewer": state["reviewer"]} if "reviewer" in state else {}),
            )

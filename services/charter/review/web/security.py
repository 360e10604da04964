"""The page's security: credentials (a server-side session from the login cookie, or a bearer
token, checked by `charter.core.auth`), security headers on every response, the same-origin check on
writes, and the limit on failed sign-ins.

The login form sets an HttpOnly, SameSite=Strict cookie holding a random session id
(`charter.review.sessions`: expiring, revoked on sign-out) — never the token; API clients may send
`Authorization: Bearer <token>` instead. Every response carries a Content-Security-Policy without
'unsafe-inline' (so even an injected inline script could not run) that also pins form targets and
the base URL; HTTPS responses add Strict-Transport-Security.
"""

from __future__ import annotations

import collections
import threading
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
from charter.core.errors import Unauthenticated

log = structlog.get_logger("charter.review.web")

COOKIE = "charter_review_session"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


HSTS = "max-age=31536000"


def credentials(request: Request) -> tuple[str | None, bool]:
    """The credential the request carries — a bearer token, else the session id of the login cookie
    — and whether it came in an Authorization header."""
    token = bearer(request.headers.get("authorization"))
    if token:
        return token, True
    return request.cookies.get(COOKIE) or None, False


async def authenticate(request: Request) -> Principal:
    """The caller (raises Unauthenticated): a bearer token checked by the app's `state.auth`, or a
    live session (`state.sessions`) whose token still authenticates."""
    credential, from_header = credentials(request)
    auth: Authenticator = request.app.state.auth
    if from_header or credential is None:
        principal = await run_in_threadpool(auth.authenticate, credential)
    else:
        token_digest = await run_in_threadpool(request.app.state.sessions.token_digest, credential)
        if token_digest is None:
            raise Unauthenticated("the session has ended (signed out or expired): sign in again")
        principal = await run_in_threadpool(auth.authenticate_digest, token_digest)
    request.state.reviewer = principal.name
    return principal


class LoginLimiter:
    """At most `failures` failed sign-ins per client in `window_seconds`; then 429 until the oldest
    failure leaves the window. Per replica, in memory, bounded to `max_clients` clients."""

    def __init__(self, failures: int, window_seconds: float = 900.0, max_clients: int = 10_000) -> None:
        self.failures, self.window_seconds, self.max_clients = failures, window_seconds, max_clients
        self._seen: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until `client` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.get(client)
            while times and times[0] <= now - self.window_seconds:
                times.popleft()
            if not times or len(times) < self.failures:
                return 0.0
            return times[0] + self.window_seconds - now

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(client, None) or collections.deque(maxlen=self.failures)
            times.append(now)
            self._seen[client] = times  # most recent last
            while len(self._seen) > self.max_clients:
                self._seen.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._seen.pop(client, None)


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
                if (
                    scope.get("scheme") == "https"
                ):  # as uvicorn saw it: X-Forwarded-Proto only from a trusted proxy
                    headers["strict-transport-security"] = HSTS
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

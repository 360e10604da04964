"""The reviewers' web page: a Starlette app on its own port, beside the review service's gRPC port.

Pages (`/`, `/admin`, `/login`) are static HTML; everything a reviewer sees comes from the JSON API
and is put on the page with `textContent`, so model text is never parsed as HTML. Every response
carries a Content-Security-Policy without 'unsafe-inline', so even an injected inline script could
not run.

Credentials: the login form sets an HttpOnly, SameSite=Strict cookie holding the reviewer's token;
API clients may send `Authorization: Bearer <token>` instead. Roles as in `charter.review.auth`:
reviewers (and admins) use the reviewer API, admins the admin page; service tokens may not use
either.

    app = create_app(ledger, Authenticator(settings.review.tokens), lease_seconds=600)
    server = WebServer(app, "0.0.0.0", 8080)
    port = await server.start()
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
import uvicorn
from charter_proto.common.v1 import conversation_pb2, label_pb2
from charter_proto.review.v1 import review_pb2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from charter.core.errors import CharterError, InvalidArgument, PermissionDenied, Unauthenticated
from charter.review.auth import Authenticator, Principal, bearer
from charter.review.store import CHOICE_NAMES as AI_CHOICE_NAMES
from charter.review.store import Claimed, Decided, Ledger

log = structlog.get_logger("charter.review.web")

STATIC = Path(__file__).parent / "static"
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
CHOICES = {
    "a": review_pb2.HUMAN_CHOICE_A,
    "b": review_pb2.HUMAN_CHOICE_B,
    "tie": review_pb2.HUMAN_CHOICE_TIE,
    "unsafe_both": review_pb2.HUMAN_CHOICE_UNSAFE_BOTH,
    "skip": review_pb2.HUMAN_CHOICE_SKIP,
}
CHOICE_NAMES = {
    review_pb2.HUMAN_CHOICE_A: "A",
    review_pb2.HUMAN_CHOICE_B: "B",
    review_pb2.HUMAN_CHOICE_TIE: "tie",
    review_pb2.HUMAN_CHOICE_UNSAFE_BOTH: "unsafe_both",
    review_pb2.HUMAN_CHOICE_SKIP: "skip",
}
MAX_ID_CHARS = 128


class HttpError(Exception):
    """A caller mistake the HTTP layer finds itself (body too large, malformed JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return "unspecified"


def _seconds(ts: Any) -> float:
    return ts.ToNanoseconds() / 1e9


def _agreement(a: review_pb2.Agreement) -> dict[str, Any]:
    return {"pairs": a.pairs, "agreement": a.agreement, "kappa": a.cohen_kappa}


def item_json(item: review_pb2.ReviewItem, now: float) -> dict[str, Any]:
    """A claimed review item as the page shows it. Model text is passed through untouched: the page
    inserts it as text, never as HTML."""
    label = item.label
    expires = _seconds(item.lease_expires_at)
    return {
        "item_id": item.item_id,
        "lease_id": item.lease_id,
        "lease_expires_at": expires,
        "lease_seconds_left": max(0.0, expires - now),
        "reason": _enum_name(review_pb2.RouteReason, item.reason, "ROUTE_REASON_"),
        "priority": item.priority,
        "decisions_needed": item.decisions_needed,
        "decisions_received": item.decisions_received,
        "conversation": [
            {"role": _enum_name(conversation_pb2.Role, m.role, "ROLE_"), "content": m.content}
            for m in label.conversation.messages
        ],
        "response_a": label.response_a,
        "response_b": label.response_b,
        "principle_ids": list(label.principle_ids),
        "constitution": {"id": label.constitution.id, "version": label.constitution.version},
        "ai": {
            "p_a": label.p_a,
            "choice": AI_CHOICE_NAMES.get(label.choice, "none"),
            "confidence": label.confidence,
            "swap_consistent": label.swap_consistent,
            "status": _enum_name(label_pb2.LabelStatus, label.status, "LABEL_STATUS_"),
            "status_detail": label.status_detail,
        },
    }


def decided_json(decided: Decided) -> dict[str, Any]:
    d, a = decided.decision, decided.accepted
    return {
        "decision": {
            "item_id": d.item_id,
            "reviewer": d.reviewer,
            "choice": CHOICE_NAMES.get(d.choice, "unspecified"),
            "comment": d.comment,
            "decided_at": _seconds(d.decided_at),
        },
        "accepted": None
        if a is None
        else {
            "sequence": a.sequence,
            "source": _enum_name(review_pb2.LabelSource, a.source, "LABEL_SOURCE_"),
            "p_a": a.p_a,
            "choice": AI_CHOICE_NAMES.get(a.choice, "none"),
        },
    }


def reviewer_stats_json(stats: review_pb2.StatsResponse, name: str) -> dict[str, Any]:
    mine = next((r for r in stats.reviewers if r.reviewer == name), review_pb2.ReviewerStats(reviewer=name))
    return {
        "reviewer": name,
        "queue_depth": stats.queue_depth,
        "decisions": mine.decisions,
        "with_ai": _agreement(mine.with_ai),
        "human_ai": _agreement(stats.human_ai),
        "human_human": _agreement(stats.human_human),
    }


def overview_json(
    stats: review_pb2.StatsResponse, overview: dict[str, Any], accept_confidence: float
) -> dict[str, Any]:
    total = stats.labels_total

    def rate(n: int) -> float | None:
        return n / total if total else None

    closed = overview.get("closed", {})
    closed_total = sum(closed.values())
    return {
        "totals": {
            "labels_total": total,
            "queue_depth": stats.queue_depth,
            "claimed": stats.claimed,
            "auto_accepted": stats.auto_accepted,
            "human_accepted": stats.human_accepted,
            "rejected": stats.rejected,
            "last_sequence": stats.last_cursor.sequence,
        },
        "rates": {
            "auto_accepted": rate(stats.auto_accepted),
            "human_accepted": rate(stats.human_accepted),
            "rejected": rate(stats.rejected),
            "accepted": rate(stats.auto_accepted + stats.human_accepted),
            "review_accepted": closed.get("accepted", 0) / closed_total if closed_total else None,
        },
        "agreement": {
            "human_human": _agreement(stats.human_human),
            "human_ai": _agreement(stats.human_ai),
            "by_principle": {p: _agreement(a) for p, a in sorted(stats.human_ai_by_principle.items())},
            "by_reviewer": [
                {"reviewer": r.reviewer, "decisions": r.decisions, **_agreement(r.with_ai)}
                for r in stats.reviewers
            ],
        },
        "routes": overview.get("routes", []),
        "confidence_histogram": overview.get("confidence_histogram", {"edges": [], "counts": []}),
        "closed": closed,
        "accept_confidence": accept_confidence,
    }


# -- request helpers ----------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is larger than `limit` bytes: by its declared
    Content-Length before anything is read, and by the bytes actually received."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HttpError(400, f"invalid Content-Length {declared[:32]!r}") from None
        if size > limit:
            raise HttpError(413, f"request body of {size} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HttpError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the request body must be a JSON object")
    return data


def text_field(
    body: dict[str, Any], name: str, *, required: bool = True, max_chars: int = MAX_ID_CHARS
) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise InvalidArgument(f"{name}: required", field=name)
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name}: must be a string, not {type(value).__name__}", field=name)
    if len(value) > max_chars:
        raise InvalidArgument(f"{name}: longer than {max_chars} characters", field=name)
    return value


def _credentials(request: Request) -> tuple[str | None, bool]:
    """The token the request carries and whether it came in an Authorization header."""
    token = bearer(request.headers.get("authorization"))
    if token:
        return token, True
    return request.cookies.get(COOKIE) or None, False


def _status_and_message(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HttpError):
        return exc.status, exc.message
    if isinstance(exc, CharterError):
        return HTTP_STATUS.get(exc.code, 500), exc.message
    return 500, "internal error"


def _error_page(status: int, title: str, message: str) -> HTMLResponse:
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


def _api(
    fn: Callable[[Request, Principal], Awaitable[dict[str, Any]]],
) -> Callable[[Request], Awaitable[Response]]:
    """A JSON endpoint: authenticates the caller, runs `fn`, maps errors to statuses (one place)."""

    async def endpoint(request: Request) -> Response:
        try:
            principal = await _authenticate(request)
            return JSONResponse(await fn(request, principal), headers={"cache-control": "no-store"})
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
            status, message = _status_and_message(exc)
            if status == 500:
                log.exception("web.failed", path=request.url.path)
            return JSONResponse({"error": message}, status_code=status, headers={"cache-control": "no-store"})

    return endpoint


async def _authenticate(request: Request) -> Principal:
    token, _ = _credentials(request)
    auth: Authenticator = request.app.state.auth
    principal = await run_in_threadpool(auth.authenticate, token)
    request.state.reviewer = principal.name
    return principal


# -- the app --------------------------------------------------------------------------------------


def create_app(
    ledger: Ledger, auth: Authenticator, *, max_body_bytes: int = 65536, lease_seconds: int = 0
) -> Starlette:
    """The reviewers' web page and its JSON API over `ledger`. `lease_seconds` is the lease a claim
    asks for (0 = the ledger's default)."""
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
                (await _authenticate(request)).require(role)
            except Unauthenticated as err:
                _, from_header = _credentials(request)
                if from_header:  # a scripted client with a bad token: say so
                    return _error_page(401, "Not signed in", err.message)
                response: Response = RedirectResponse("/login", status_code=303)
                if COOKIE in request.cookies:  # a stale token: forget it
                    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
                return response
            except PermissionDenied as err:
                return _error_page(403, "Not allowed", err.message)
            return HTMLResponse(pages[name], headers={"cache-control": "no-store"})

        return endpoint

    async def get_login(request: Request) -> Response:
        return login_page()

    async def post_login(request: Request) -> Response:
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
            log.info("web.login.failed")
            return login_page("That token is not valid. Check it and try again.", 401)
        except PermissionDenied:
            return login_page("Service tokens cannot use the review page; use a reviewer token.", 403)
        request.state.reviewer = principal.name
        log.info("web.login", reviewer=principal.name, role=principal.role)
        response = RedirectResponse("/admin" if principal.role == "admin" else "/", status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def post_logout(request: Request) -> Response:
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
        item = item_json(claimed.item, ledger.clock()) if claimed.item is not None else None
        if item is not None:
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
        log.info("web.item.decided", reviewer=principal.name, item_id=item_id, choice=CHOICE_NAMES[choice])
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
        return _error_page(status, "Not found" if status == 404 else "Error", str(detail))

    routes = [
        Route("/", page("review", "reviewer"), methods=["GET"]),
        Route("/admin", page("admin", "admin"), methods=["GET"]),
        Route("/login", get_login, methods=["GET"]),
        Route("/login", post_login, methods=["POST"]),
        Route("/logout", post_logout, methods=["POST"]),
        Route("/api/me", _api(me), methods=["GET"]),
        Route("/api/claim", _api(claim), methods=["POST"]),
        Route("/api/decide", _api(decide), methods=["POST"]),
        Route("/api/release", _api(release), methods=["POST"]),
        Route("/api/stats", _api(stats), methods=["GET"]),
        Route("/api/admin/overview", _api(admin_overview), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes, middleware=[Middleware(_Guard)], exception_handlers={HTTPException: http_error}
    )
    app.state.auth = auth
    app.state.ledger = ledger
    return app


class _Guard:
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
            if request.method not in ("GET", "HEAD", "OPTIONS") and not _same_origin(request):
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
            state = scope.get("state") or {}
            level = log.info if status < 400 or status in (401, 404) else log.warning
            level(
                "web.request",
                method=request.method,
                path=request.url.path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                **({"reviewer": state["reviewer"]} if "reviewer" in state else {}),
            )


def _same_origin(request: Request) -> bool:
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


# -- the server -----------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service that embeds it owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    """Runs the app with uvicorn inside the caller's asyncio loop."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def _bind(self) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as err:
            sock.close()
            raise OSError(
                err.errno, f"cannot bind the web page to {self.host}:{self.port}: {err.strerror}"
            ) from None
        return sock

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        sock = self._bind()
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="charter-review-web")
        while not self._server.started:
            if self._task.done():
                sock.close()
                self._task.result()  # raises what stopped it
                raise OSError(f"the web page on {self.host}:{port} stopped while starting")
            await asyncio.sleep(0.01)
        self.port = port
        log.info("web.started", host=self.host, port=port)
        return port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = self._task = None
        log.info("web.stopped", port=self.port)

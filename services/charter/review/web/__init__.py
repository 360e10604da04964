"""The reviewers' web page: a Starlette app on its own port, beside the review service's gRPC port.

Pages (`/`, `/admin`, `/login`) are static HTML; everything a reviewer sees comes from the JSON API
and is put on the page with `textContent`, so model text is never parsed as HTML (`security`: the
headers, cookie and same-origin rules). Roles as in `charter.core.auth`: reviewers (and admins) use
the reviewer API, admins the admin page; service tokens may not use either.

- `routes`: the app (`create_app`), its pages and JSON API; `views`: the JSON it returns;
  `body`: request bodies; `security`: credentials and headers; `server`: uvicorn in the service's loop.

The page is protocol-free: it works on the ledger's domain types, and is given a decoder for label
payloads (the review servicer passes `charter.api.review.label_view`).

    app = create_app(ledger, Authenticator(settings.review.tokens), label_view, lease_seconds=600)
    server = WebServer(app, "0.0.0.0", 8080)
    port = await server.start()
    ...
    await server.stop()
"""

from charter.review.web.routes import STATIC, create_app
from charter.review.web.security import COOKIE
from charter.review.web.server import WebServer

__all__ = ["COOKIE", "STATIC", "WebServer", "create_app"]

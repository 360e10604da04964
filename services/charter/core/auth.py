"""Who may call a Charter service: bearer tokens with a role, from settings and a tokens file, and
the access policy the server interceptor enforces for every RPC.

Tokens are compared by their SHA-256 digest in constant time. Roles:
- `reviewer`: the review queue (Claim, Decide, Release, Stats) and the reviewer web page;
- `service`: machine callers — pipelines, trainers, workers (Generate, Compare, Submit, StreamLabels,
  the trainer's RPCs, …);
- `admin`: everything, including the review admin page.
Which role each RPC needs is one table (`charter.app.catalog`); a method missing from it is refused
(deny by default). The tokens file (a YAML list of {name, role, token}, e.g. a mounted Kubernetes
Secret) is re-read when its modification time changes, so tokens can be added without a restart.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
import yaml
from pydantic import TypeAdapter, ValidationError

from charter.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from charter.core.settings import ReviewerToken

log = structlog.get_logger("charter.auth")

ROLES = ("reviewer", "service", "admin")
_TOKENS = TypeAdapter(list[ReviewerToken])


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def require(self, *roles: str) -> Principal:
        """Raise PERMISSION_DENIED unless this principal is an admin or has one of `roles`."""
        if self.role != "admin" and self.role not in roles:
            raise PermissionDenied(f"{self.name} ({self.role}) may not do this; it needs: {', '.join(roles)}")
        return self


MIN_TOKEN_CHARS = 16
"""The shortest token a service accepts on an address other hosts can reach (`CharterServer` checks it
at start; `Authenticator.min_length` then skips shorter ones in a re-read tokens file)."""


def digest(token: str) -> bytes:
    """A token's SHA-256: what is kept and compared, never the token."""
    return hashlib.sha256(token.encode()).digest()


def load_tokens_file(path: Path) -> list[ReviewerToken]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        return _TOKENS.validate_python(data)
    except OSError as err:
        raise InvalidArgument(f"{path}: cannot read tokens file: {err.strerror}") from None
    except (yaml.YAMLError, ValidationError) as err:
        raise InvalidArgument(f"{path}: invalid tokens file: {str(err).splitlines()[0]}") from None


class Authenticator:
    def __init__(self, tokens: list[ReviewerToken], tokens_file: Path | None = None) -> None:
        self._static = list(tokens)
        self._file = tokens_file
        self._mtime: float | None = None
        self._lock = threading.Lock()
        self._table: list[tuple[bytes, Principal]] = []
        self.min_length = 0
        """Tokens shorter than this are not accepted (skipped, with a warning naming their entry)."""
        self._rebuild(self._read_file())

    def short_tokens(self, min_length: int) -> list[str]:
        """The names of the configured tokens shorter than `min_length` characters."""
        tokens = self._static + self._read_file()
        return [t.name for t in tokens if len(t.token.get_secret_value()) < min_length]

    def require_length(self, min_length: int) -> None:
        """From now on accept no token shorter than `min_length` characters."""
        self.min_length = min_length
        self._rebuild(self._read_file())

    def _read_file(self) -> list[ReviewerToken]:
        if self._file is None:
            return []
        self._mtime = self._file.stat().st_mtime if self._file.exists() else None
        return load_tokens_file(self._file) if self._mtime is not None else []

    def _rebuild(self, from_file: list[ReviewerToken]) -> None:
        tokens = self._static + from_file
        for t in tokens:
            if len(t.token.get_secret_value()) < self.min_length:
                log.warning("auth.token.too_short", name=t.name, min_length=self.min_length)
        table = [
            (digest(t.token.get_secret_value()), Principal(t.name, t.role))
            for t in tokens
            if len(t.token.get_secret_value()) >= self.min_length
        ]
        with self._lock:
            self._table = table

    def _refresh(self) -> None:
        if self._file is None:
            return
        mtime = self._file.stat().st_mtime if self._file.exists() else None
        if mtime != self._mtime:
            self._rebuild(self._read_file())

    def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token belongs to, or UNAUTHENTICATED."""
        if not token:
            raise Unauthenticated("missing credentials: send `authorization: Bearer <token>`")
        return self.authenticate_digest(digest(token))

    def authenticate_digest(self, token_digest: bytes) -> Principal:
        """The principal of the token with this SHA-256 digest (a web session's), or UNAUTHENTICATED
        — also when that token has since been removed or replaced."""
        self._refresh()
        found = None
        with self._lock:
            for known, principal in self._table:
                if hmac.compare_digest(known, token_digest):  # look at every entry: no timing hint
                    found = principal
        if found is None:
            raise Unauthenticated("invalid token")
        return found


def read_token(path: Path, field: str) -> str:
    """The bearer token a caller keeps in the file `path` (surrounding whitespace dropped);
    INVALID_ARGUMENT naming `field` if the file cannot be read or is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise InvalidArgument(f"{field}: cannot read {path}: {err.strerror}", field=field) from None
    if not token:
        raise InvalidArgument(f"{field}: {path} is empty", field=field)
    return token


def environment_token(name: str) -> str:
    """A worker's token: the variable `name`, else the file its `<name>_FILE` variable names
    (`read_token`); "" when neither is set."""
    token = os.environ.get(name, "")
    token_file = os.environ.get(f"{name}_FILE")
    return read_token(Path(token_file), f"{name}_FILE") if not token and token_file else token


def bearer(value: str | None) -> str | None:
    """The token in an `authorization` value (`Bearer <token>`), or None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current_principal() -> Principal:
    """Who is making the RPC being handled (set by the server interceptor). A service with no
    tokens configured has no principals: the caller is then `anonymous` with every role."""
    return _PRINCIPAL.get() or ANONYMOUS


ANONYMOUS = Principal("anonymous", "admin")


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call one service: `roles` maps a method name (`Submit`) to the roles that may call it
    (admin may call everything). With an `authenticator` every call needs a valid token and a method
    missing from `roles` is refused; without one (no tokens configured) every call is let in."""

    roles: Mapping[str, tuple[str, ...]]
    authenticator: Authenticator | None = None
    require_tokens_off_loopback: bool = False
    """Refuse to serve on a non-loopback address without tokens (rather than only warn)."""

    @property
    def open(self) -> bool:
        return self.authenticator is None

    def admit(self, method: str, authorization: str | None) -> Principal:
        """The caller of `method`, or UNAUTHENTICATED / PERMISSION_DENIED."""
        if self.authenticator is None:
            return ANONYMOUS
        principal = self.authenticator.authenticate(bearer(authorization))
        roles = self.roles.get(method)
        if roles is None:
            if principal.role != "admin":
                raise PermissionDenied(f"{method} is not open to any role but admin")
            return principal
        return principal.require(*roles)

    def bind(self, principal: Principal) -> contextvars.Token[Principal | None]:
        return _PRINCIPAL.set(principal)

    @staticmethod
    def unbind(token: contextvars.Token[Principal | None]) -> None:
        _PRINCIPAL.reset(token)


def access_policy(
    roles: Mapping[str, tuple[str, ...]],
    tokens: list[ReviewerToken],
    tokens_file: Path | None,
    *,
    always: bool = False,
    require_tokens_off_loopback: bool = False,
) -> AccessPolicy:
    """The policy of a service from its settings: tokens checked when any are configured (or
    `always`: a service that refuses every call until tokens exist, like review)."""
    authenticator = Authenticator(tokens, tokens_file) if (always or tokens or tokens_file) else None
    return AccessPolicy(roles, authenticator, require_tokens_off_loopback)

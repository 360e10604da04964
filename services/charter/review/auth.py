"""Who may call the review service: bearer tokens with a role, from settings and a tokens file.

Tokens are compared by their SHA-256 digest in constant time. Roles:
- `reviewer`: Claim, Decide, Release, Stats (and the reviewer web page);
- `service`: Submit, StreamLabels, Stats (pipelines and trainers);
- `admin`: everything, including the admin page.
The tokens file (a YAML list of {name, role, token}, e.g. a mounted Kubernetes Secret) is re-read
when its modification time changes, so tokens can be added without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from charter.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from charter.core.settings import ReviewerToken

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


def _digest(token: str) -> bytes:
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
        self._rebuild(self._read_file())

    def _read_file(self) -> list[ReviewerToken]:
        if self._file is None:
            return []
        self._mtime = self._file.stat().st_mtime if self._file.exists() else None
        return load_tokens_file(self._file) if self._mtime is not None else []

    def _rebuild(self, from_file: list[ReviewerToken]) -> None:
        table = [
            (_digest(t.token.get_secret_value()), Principal(t.name, t.role)) for t in self._static + from_file
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
        self._refresh()
        digest = _digest(token)
        found = None
        with self._lock:
            for known, principal in self._table:
                if hmac.compare_digest(known, digest):  # look at every entry: no timing hint
                    found = principal
        if found is None:
            raise Unauthenticated("invalid token")
        return found


def bearer(value: str | None) -> str | None:
    """The token in an `authorization` value (`Bearer <token>`), or None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None

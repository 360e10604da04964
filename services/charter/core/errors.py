"""One error hierarchy for the whole system, sorted by who can act on it.

Pure: no grpc import. Each error names its gRPC status code by name; the mapping to a real
`grpc.StatusCode` happens in one place, `charter.core.interceptors.status_for`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CharterError(Exception):
    """Base of every error Charter raises on purpose. `str(err)` is one line that says what to change."""

    code: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = value


# The caller can fix these.
class InvalidArgument(CharterError):
    code = "INVALID_ARGUMENT"


class NotFound(CharterError):
    code = "NOT_FOUND"


class AlreadyExists(CharterError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(CharterError):
    code = "FAILED_PRECONDITION"


class OutOfRange(CharterError):
    code = "OUT_OF_RANGE"


class Unauthenticated(CharterError):
    code = "UNAUTHENTICATED"


class PermissionDenied(CharterError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(CharterError):
    code = "RESOURCE_EXHAUSTED"
    retryable = True


# Transient trouble: retry later.
class Unavailable(CharterError):
    code = "UNAVAILABLE"
    retryable = True


class DeadlineExceeded(CharterError):
    code = "DEADLINE_EXCEEDED"
    retryable = True


# Ours to fix.
class Internal(CharterError):
    code = "INTERNAL"


def one_line(value: Any, limit: int = 80) -> str:
    """A value rendered for an error message: repr, newlines escaped, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

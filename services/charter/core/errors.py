"""One error hierarchy for the whole system, sorted by who can act on it.

Pure: no grpc import. Each error names its gRPC status code by name; the mapping to a real
`grpc.StatusCode` happens in one place, `charter.core.interceptors.status_for`.
"""

from __future__ import annotations

import re
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


MAX_SHOWN_CHARS = 200
"""A word of an error message (an id, a path, a value) longer than this is shortened (`bounded`)."""
MAX_MESSAGE_BYTES = 2048
"""An error message sent to a caller is at most this many bytes of UTF-8 (`bounded`). A status message
travels in a trailer, which gRPC percent-encodes (up to 3 bytes a byte) and which a default client
refuses past 16 KiB of metadata."""
_LONG_WORD = re.compile(rf"\S{{{MAX_SHOWN_CHARS + 1},}}")
_BRACKETS: dict[type, str] = {list: "[]", tuple: "()", dict: "{}", set: "{}", frozenset: "{}"}


def one_line(value: Any, limit: int = 80) -> str:
    """A value rendered for an error message: repr, newlines escaped, shortened. Renders only about
    `limit` characters of the value, however large or deep it is (a YAML alias fan-out of millions of
    items, a huge integer): the cost does not grow with the value."""
    text = _render(value, limit + 1)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _render(value: Any, budget: int) -> str:
    """The start of repr(value), at least `budget` characters of it when there are that many."""
    budget = max(budget, 1)
    if isinstance(value, str | bytes | bytearray):
        return repr(value[:budget])
    if isinstance(value, int) and value.bit_length() > 256:  # repr of a huge int is slow, or refused
        return f"<an integer of {value.bit_length()} bits>"
    brackets = _BRACKETS.get(type(value))
    if brackets is None or not value:
        return repr(value)[:budget]
    out = brackets[0]
    for i, item in enumerate(value.items() if isinstance(value, dict) else value):
        if len(out) >= budget:
            return out  # each level costs a character, so nesting and cycles end here too
        out += ", " if i else ""
        if isinstance(value, dict):
            out += _render(item[0], budget - len(out)) + ": "
            item = item[1]
        out += _render(item, budget - len(out))
    return out + ("," if type(value) is tuple and len(value) == 1 else "") + brackets[1]


def bounded(message: str) -> str:
    """`message` fit to send to a caller: every word longer than MAX_SHOWN_CHARS shortened to its start,
    an ellipsis and its length, and the whole cut at MAX_MESSAGE_BYTES."""
    keep = MAX_SHOWN_CHARS // 2
    text = _LONG_WORD.sub(lambda m: f"{m[0][:keep]}… ({len(m[0])} characters)", message)
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_MESSAGE_BYTES:
        return text
    return data[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore") + f"… ({len(message)} characters in all)"

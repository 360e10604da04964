"""Reading a request's body within a size limit, as JSON, and its text fields."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from charter.core.errors import InvalidArgument

MAX_ID_CHARS = 128


class HttpError(Exception):
    """A caller mistake the HTTP layer finds itself (body too large, malformed JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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

"""Strict JSON bodies, decoded once.

Litestar converts request bodies with msgspec in lax mode, which would turn
``"units": "2"`` into 2. The contract wants wrong types refused, so this
``before_request`` hook decodes the raw body strictly against the handler's own
``data`` annotation. It runs after the API key check and reads the body through
Litestar (so the 64 KiB limit answers 413), keeping the order 401, 413, 400.

The decoded Struct is kept on the request as its parsed JSON (Litestar's
``ScopeState.json``, where ``Request.json()`` looks first), so the handler's
``data`` is that very Struct: msgspec passes an instance of the wanted type through
unchanged, and the body is parsed once.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.utils.scope.state import ScopeState

from skill_credits import errors
from skill_credits.auth import authenticate, confirm


@cache
def _body_type(handler: HTTPRouteHandler) -> tuple[Any, bool] | None:
    field = handler.parsed_fn_signature.parameters.get("data")
    if field is None:
        return None
    return field.annotation, field.is_optional


def field_and_message(exc: msgspec.ValidationError) -> tuple[str, str]:
    message = str(exc)
    path = None
    if " - at `$" in message:
        message, _, path = message.partition(" - at `$")
        path = path.rstrip("`").lstrip(".") or None
    if path is None and ": " in message and message.split(": ", 1)[0].isidentifier():
        path, message = message.split(": ", 1)  # our own __post_init__ messages
    if path is None and "unknown field" in message:
        path = message.rsplit("`", 2)[-2] if message.count("`") >= 2 else None
    return path or "body", message


def _invalid_utf8_field(raw: bytes) -> str:
    """The key whose string value holds the first byte that is not UTF-8, else "body".

    One linear pass over the valid prefix: strings (with their escapes) and the
    ``:`` that makes the last one a key.
    """
    try:
        raw.decode("utf-8")
        return "body"
    except UnicodeDecodeError as exc:
        prefix = raw[: exc.start].decode("utf-8")
    key = last = None
    in_string = escaped = False
    start = 0
    for i, ch in enumerate(prefix):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string, last = False, prefix[start:i]
        elif ch == '"':
            in_string, start = True, i + 1
        elif ch == ":":
            key = last
        elif ch in ",{[":
            key = None
    return key if in_string and key else "body"


async def api_request(request: Request) -> None:
    """``before_request`` of every /v1 route: the key (401), then the body (413, 415, 400)."""
    await authenticate(request)
    await strict_body(request)


async def strict_body(request: Request) -> None:
    try:
        await _check_body(request)
    except HTTPException:
        await confirm(request)  # a key only the cache vouched for: 401 comes first
        raise


async def _check_body(request: Request) -> None:
    declared = _body_type(request.route_handler)
    if declared is None:
        return
    body_type, optional = declared
    raw = await request.body()
    if not raw.strip():
        if optional:
            return
        raise errors.validation_error("body", "a JSON object is required")
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise errors.unsupported_media_type(media_type)
    try:
        decoded = msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        field, message = field_and_message(exc)
        raise errors.validation_error(field, message) from None
    except msgspec.DecodeError as exc:
        raise errors.validation_error("body", f"malformed JSON ({exc})") from None
    except UnicodeDecodeError:  # bytes inside a string that are not UTF-8
        raise errors.validation_error(_invalid_utf8_field(raw), "must be valid UTF-8") from None
    ScopeState.from_scope(request.scope).json = decoded  # what the handler's data is

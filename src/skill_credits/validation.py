"""Input rules of the public contract, shared by every schema and path parameter.

msgspec's ``pattern`` uses ``re.search`` and ``$`` also matches before a trailing
newline, so names are checked here with ``fullmatch`` and a field-naming message.
The OpenAPI document still states each rule (``schema_only`` here; the path and header
parameters in ``openapi.py``): the same regular expressions, anchored, for the
document's eyes only.

The schemas use these rules, and `skill_credits.host.client` imports the schemas in
host apps that have only httpx and msgspec, so this module imports nothing of the
server (not even Litestar).
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes

from msgspec import Meta

USER_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
SKILL_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


def anchored(rule: re.Pattern[str]) -> str:
    """A ``fullmatch`` rule as a JSON Schema pattern (ECMA-262 ``$`` is the very end)."""
    return f"^{rule.pattern}$"


def schema_only(**schema: Any) -> Meta:
    """msgspec metadata only the OpenAPI document sees: a rule checked in code with a
    field-naming message (a pattern), or a bound Litestar would drop or round (a 0
    minimum of an optional field, 2**63-1 as a float). Litestar reads it from
    ``extra_json_schema["extra"]``; msgspec enforces none of it."""
    return Meta(extra_json_schema={"extra": schema})


UUID_FORMAT = schema_only(format="uuid")
USER_ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ : @ -"
SKILL_NAME_RULE = (
    "uppercase letters, digits and underscores, starting with a letter, at most 64 characters"
    " (e.g. GEO_WRITER_FULL)"
)

MAX_INT64 = 2**63 - 1


def check_user_id(value: str, field: str = "user_id") -> str:
    if not USER_ID_RE.fullmatch(value):
        raise ValueError(f"{field}: must be {USER_ID_RULE}")
    return value


def check_skill_name(value: str, field: str = "name") -> str:
    if not SKILL_NAME_RE.fullmatch(value):
        raise ValueError(f"{field}: must be {SKILL_NAME_RULE}")
    return value


def check_text(value: str | None, field: str) -> str | None:
    """PostgreSQL text cannot hold NUL; refuse it (and other C0 controls but tab/newline)."""
    if value is not None and re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", value):
        raise ValueError(f"{field}: must not contain control characters")
    return value


def _invalid(field: str, message: str) -> Exception:
    from skill_credits.errors import validation_error  # the server's; see the docstring

    return validation_error(field, message)


def path_user_id(value: str) -> str:
    if not USER_ID_RE.fullmatch(value):
        raise _invalid("user_id", f"must be {USER_ID_RULE}")
    return value


def path_skill_name(value: str) -> str:
    if not SKILL_NAME_RE.fullmatch(value):
        raise _invalid("name", f"must be {SKILL_NAME_RULE}")
    return value


def path_uuid(value: str, field: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _invalid(field, "must be a UUID") from None


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise _invalid("Idempotency-Key", "must be 1-255 printable ASCII characters")
    return value


def plain_text(field: str, encoded: bytes) -> None:
    """Percent-encoded text must be UTF-8 without NUL (PostgreSQL text cannot hold NUL).

    Parsers replace bytes that are not UTF-8 silently, so this looks at the raw bytes.
    """
    try:
        decoded = unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(field, "must be valid UTF-8") from None
    if "\x00" in decoded:
        raise _invalid(field, "must not contain NUL")


def check_urlencoded(raw: bytes) -> None:
    """Every name and value of ``name=value&...`` (a form or a query string)."""
    for pair in raw.replace(b"+", b" ").split(b"&"):
        name, _, value = pair.partition(b"=")
        field = unquote_to_bytes(name).decode("utf-8", "replace").replace("\x00", "") or "body"
        plain_text(field, name)
        plain_text(field, value)

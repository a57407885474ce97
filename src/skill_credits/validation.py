"""Input rules of the public contract, shared by every schema and path parameter.

msgspec's ``pattern`` uses ``re.search`` and ``$`` also matches before a trailing
newline, so names are checked here with ``fullmatch`` and a field-naming message.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import unquote_to_bytes

from skill_credits.errors import validation_error

USER_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
SKILL_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")

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


def path_user_id(value: str) -> str:
    if not USER_ID_RE.fullmatch(value):
        raise validation_error("user_id", f"must be {USER_ID_RULE}")
    return value


def path_skill_name(value: str) -> str:
    if not SKILL_NAME_RE.fullmatch(value):
        raise validation_error("name", f"must be {SKILL_NAME_RULE}")
    return value


def path_uuid(value: str, field: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise validation_error(field, "must be a UUID") from None


def idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise validation_error("Idempotency-Key", "must be 1-255 printable ASCII characters")
    return value


def plain_text(field: str, encoded: bytes) -> None:
    """Percent-encoded text must be UTF-8 without NUL (PostgreSQL text cannot hold NUL).

    Parsers replace bytes that are not UTF-8 silently, so this looks at the raw bytes.
    """
    try:
        decoded = unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise validation_error(field, "must be valid UTF-8") from None
    if "\x00" in decoded:
        raise validation_error(field, "must not contain NUL")


def check_urlencoded(raw: bytes) -> None:
    """Every name and value of ``name=value&...`` (a form or a query string)."""
    for pair in raw.replace(b"+", b" ").split(b"&"):
        name, _, value = pair.partition(b"=")
        field = unquote_to_bytes(name).decode("utf-8", "replace").replace("\x00", "") or "body"
        plain_text(field, name)
        plain_text(field, value)

"""The cursors of keyset pagination: newest first over an identity ``seq`` column, or
after a row named by its id (a user's grants, in spending order).

Cursors are opaque to clients. The page's query is ``db.keyset_page``: SQL lives in the
repositories and db.py only.
"""

from __future__ import annotations

import base64
import binascii
import re

from skill_credits.validation import MAX_INT64

# ASCII digits only (str.isdigit also takes "²", which int() refuses), at most 19 of them.
_CURSOR = re.compile(r"s([0-9]{1,19})")


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def _raw(cursor: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def decode_cursor(cursor: str) -> int | None:
    raw = _raw(cursor)
    match = _CURSOR.fullmatch(raw) if raw is not None else None
    if match is None or int(match[1]) > MAX_INT64:  # seq is a bigint: 2^63 would reach SQL
        return None
    return int(match[1])


_ID_CURSOR = re.compile(r"i([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def encode_id_cursor(row_id: str) -> str:
    return base64.urlsafe_b64encode(f"i{row_id}".encode()).decode().rstrip("=")


def decode_id_cursor(cursor: str) -> str | None:
    raw = _raw(cursor)
    match = _ID_CURSOR.fullmatch(raw) if raw is not None else None
    return match[1] if match else None

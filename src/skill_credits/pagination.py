"""The cursors of keyset pagination (newest first, over an identity ``seq`` column).

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


def decode_cursor(cursor: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    match = _CURSOR.fullmatch(raw)
    if match is None or int(match[1]) > MAX_INT64:  # seq is a bigint: 2^63 would reach SQL
        return None
    return int(match[1])

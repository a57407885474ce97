"""Keyset pagination: the page's query (``keyset_page``, newest first over an identity
``seq`` column) and the cursors, of a ``seq`` or of a row named by its id (a user's
grants, in spending order).

Cursors are opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

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


async def keyset_page(
    conn: AsyncConnection,
    table: str,
    columns: str,
    equal: dict[str, Any],
    before: int | None,
    limit: int,
) -> tuple[list[Row], str | None]:
    """Keyset pagination, newest first: up to ``limit`` rows where every ``equal`` column
    (skipped when None) matches its value, or any of a tuple of values.

    ``table``, ``columns`` and the keys of ``equal`` come from code, never from a client.
    A page costs the same deep in a log as at its start: ``seq < :before`` is an index
    range condition, never an OFFSET.
    """
    filters = {column: value for column, value in equal.items() if value is not None}
    where = [
        f"{column} = ANY(:{column})" if isinstance(value, tuple) else f"{column} = :{column}"
        for column, value in filters.items()
    ] or ["true"]
    if before is not None:
        where.append("seq < :before")
    rows = (
        await conn.execute(
            text(
                f"SELECT {columns}, seq FROM {table} WHERE {' AND '.join(where)}"
                " ORDER BY seq DESC LIMIT :limit"
            ),
            {**filters, "before": before, "limit": limit + 1},
        )
    ).all()
    next_cursor = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return rows[:limit], next_cursor

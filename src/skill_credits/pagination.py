"""Keyset pagination: the pages' queries (``keyset_page``, newest first over a ``seq``
column; ``time_page``, newest first by ``created_at`` then ``seq``) and the cursors, of a
``seq``, of an instant and a ``seq``, or of a row named by its id (a user's grants, in
spending order).

Cursors are opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
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


# An instant (microseconds since 1970, UTC) and a seq.
_TIME_CURSOR = re.compile(r"t(-?[0-9]{1,19})\.([0-9]{1,19})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_time_cursor(at: datetime, seq: int) -> str:
    raw = f"t{(at - _EPOCH) // _MICROSECOND}.{seq}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_time_cursor(cursor: str) -> tuple[datetime, int] | None:
    """The instant and the seq of a cursor ``encode_time_cursor`` made; None for anything
    else."""
    raw = _raw(cursor)
    match = _TIME_CURSOR.fullmatch(raw) if raw is not None else None
    if match is None or int(match[2]) > MAX_INT64:
        return None
    try:
        return _EPOCH + int(match[1]) * _MICROSECOND, int(match[2])
    except OverflowError:
        return None


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
    filters, where = _equal(equal)
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


async def time_page(
    conn: AsyncConnection,
    table: str,
    columns: str,
    equal: dict[str, Any],
    before: tuple[datetime, int] | int | None,
    limit: int,
) -> tuple[list[Row], str | None]:
    """As ``keyset_page``, newest first by ``created_at`` then ``seq`` (an index on
    ``(created_at, seq)``, or on the ``equal`` columns then those, serves it). ``before``:
    a ``decode_time_cursor`` result (a bare seq is found by its row)."""
    filters, where = _equal(equal)
    if isinstance(before, tuple):
        where.append("(created_at, seq) < (:before_at, :before_seq)")
        filters |= {"before_at": before[0], "before_seq": before[1]}
    elif before is not None:
        where.append(
            f"(created_at, seq) < (SELECT created_at, seq FROM {table} WHERE seq = :before_seq)"
        )
        filters |= {"before_seq": before}
    rows = (
        await conn.execute(
            text(
                f"SELECT {columns}, created_at AS page_at, seq FROM {table}"
                f" WHERE {' AND '.join(where)} ORDER BY created_at DESC, seq DESC LIMIT :limit"
            ),
            {**filters, "limit": limit + 1},
        )
    ).all()
    last = rows[limit - 1] if len(rows) > limit else None
    return rows[:limit], encode_time_cursor(last.page_at, last.seq) if last else None


def _equal(equal: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The ``equal`` columns that are not None, and a condition for each (``true`` when
    none)."""
    filters = {column: value for column, value in equal.items() if value is not None}
    where = [
        f"{column} = ANY(:{column})" if isinstance(value, tuple) else f"{column} = :{column}"
        for column, value in filters.items()
    ] or ["true"]
    return filters, where

"""Every query of the events outbox and its webhook deliveries.

A user's events and their deliveries live with the user's rows (``events``,
``event_deliveries``, keyed by ``user_id``); the catalogue's (``skill.changed``) apart
(``skill_events``, ``skill_event_deliveries``). ``all_events`` lists both in one order.
A delivery row says which it is by its ``user_id`` (None: the catalogue's)."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row

from skill_credits.db import Connection
from skill_credits.events.schemas import Event
from skill_credits.pagination import decode_time_cursor, time_page

EVENT_COLUMNS = "id::text AS id, type, user_id, data::text AS data, created_at"


def event_from_row(row: Any) -> Event:
    return Event(
        id=row.id,
        type=row.type,
        user_id=row.user_id,
        data=json.loads(row.data),
        created_at=row.created_at,
    )


async def page(
    conn: Connection,
    limit: int,
    before: tuple[datetime, int] | int | None,
    event_type: str | tuple[str, ...] | None,
    user_id: str | None,
) -> tuple[list[Event], str | None]:
    """Newest first by the instant each was written, ties by ``seq`` (on Citus every node
    numbers its events from its own range). ``event_type``: one type, any of several, or
    None for every type; ``before``: an instant and a seq, or a bare seq (a cursor of the
    feed's former order)."""
    rows, next_cursor = await time_page(
        conn, "all_events", EVENT_COLUMNS, {"type": event_type, "user_id": user_id}, before, limit
    )
    return [event_from_row(r) for r in rows], next_cursor


__all__ = ["decode_time_cursor"]


async def add_endpoint(conn: Connection, url: str) -> tuple[str, str]:
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = (
        await conn.execute(
            text(
                "INSERT INTO webhook_endpoints (url, secret) VALUES (:url, :secret)"
                " RETURNING id::text AS id"
            ),
            {"url": url, "secret": secret},
        )
    ).one()
    return row.id, secret


async def remove_endpoint(conn: Connection, url: str) -> bool:
    result = await conn.execute(
        text("UPDATE webhook_endpoints SET active = false WHERE url = :url AND active"),
        {"url": url},
    )
    return result.rowcount > 0


async def list_endpoints(conn: Connection) -> list[Row]:
    return (
        await conn.execute(
            text(
                "SELECT w.url, w.active, w.created_at,"
                " count(*) FILTER (WHERE d.status = 'pending') AS pending,"
                " count(*) FILTER (WHERE d.status = 'delivered') AS delivered,"
                " count(*) FILTER (WHERE d.status = 'dead') AS dead"
                " FROM webhook_endpoints w LEFT JOIN ("
                "  SELECT endpoint_id, status FROM event_deliveries"
                "  UNION ALL SELECT endpoint_id, status FROM skill_event_deliveries"
                " ) d ON d.endpoint_id = w.id"
                " GROUP BY w.id ORDER BY w.created_at"
            )
        )
    ).all()


# Due deliveries, oldest event first, locked until the caller's transaction ends (a crash
# unlocks them): a user's events' and the catalogue's, each of their own table. A user's
# are claimed user by user (DUE_USERS, then CLAIM for each): a lock is taken by a query
# that names its user, which on a Citus cluster runs on the node that holds the user (a
# query over every user's rows cannot lock them there).
DUE_USERS = (
    "SELECT user_id FROM event_deliveries"
    " WHERE status = 'pending' AND next_attempt_at <= now()"
    " GROUP BY user_id ORDER BY min(next_attempt_at), user_id LIMIT :batch"
)
CLAIM = (
    "SELECT d.event_id::text AS event_id, d.endpoint_id::text AS endpoint_id,"
    "       d.attempts, w.url, w.secret, e.type, e.user_id, e.data::text AS data,"
    "       e.created_at, e.seq"
    " FROM event_deliveries d"
    " JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.active"
    " JOIN events e ON e.user_id = d.user_id AND e.id = d.event_id"
    " WHERE d.user_id = :user_id AND d.status = 'pending' AND d.next_attempt_at <= now()"
    " ORDER BY e.seq LIMIT :batch"
    " FOR UPDATE OF d SKIP LOCKED"
)
CLAIM_SKILL = (
    "SELECT d.event_id::text AS event_id, d.endpoint_id::text AS endpoint_id,"
    "       d.attempts, w.url, w.secret, e.type, NULL AS user_id, e.data::text AS data,"
    "       e.created_at, e.seq"
    " FROM skill_event_deliveries d"
    " JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.active"
    " JOIN skill_events e ON e.id = d.event_id"
    " WHERE d.status = 'pending' AND d.next_attempt_at <= now()"
    " ORDER BY e.seq LIMIT :batch"
    " FOR UPDATE OF d SKIP LOCKED"
)


async def claim_due(conn: Connection, batch: int) -> list[Row]:
    """Due deliveries (up to ``batch`` of each kind), oldest event first, locked until the
    caller's transaction ends."""
    rows = [*(await conn.execute(text(CLAIM_SKILL), {"batch": batch})).all()]
    claimed = 0
    for user_id in (await conn.execute(text(DUE_USERS), {"batch": batch})).scalars().all():
        mine = (
            await conn.execute(text(CLAIM), {"user_id": user_id, "batch": batch - claimed})
        ).all()
        rows.extend(mine)
        claimed += len(mine)
        if claimed >= batch:
            break
    return sorted(rows, key=lambda row: row.seq)


def _deliveries(user_id: str | None) -> tuple[str, str]:
    """The table of a delivery's kind, and the condition that finds it by its key."""
    key = "event_id = CAST(:e AS uuid) AND endpoint_id = CAST(:w AS uuid)"
    if user_id is None:
        return "skill_event_deliveries", key
    return "event_deliveries", f"user_id = :u AND {key}"


async def mark_delivered(conn: Connection, delivery: Row) -> None:
    table, key = _deliveries(delivery.user_id)
    await conn.execute(
        text(
            f"UPDATE {table} SET status = 'delivered', attempts = attempts + 1,"
            f" delivered_at = now(), last_error = NULL WHERE {key}"
        ),
        {"u": delivery.user_id, "e": delivery.event_id, "w": delivery.endpoint_id},
    )


async def mark_failed(conn: Connection, delivery: Row, error: str, retry_in: float | None) -> None:
    """``retry_in`` None: no attempts left, the delivery is dead-lettered."""
    table, key = _deliveries(delivery.user_id)
    await conn.execute(
        text(
            f"UPDATE {table} SET attempts = attempts + 1, last_error = :error,"
            " status = CASE WHEN CAST(:retry AS float8) IS NULL THEN 'dead' ELSE 'pending' END,"
            " next_attempt_at = now() + make_interval(secs => coalesce(CAST(:retry AS float8), 0))"
            f" WHERE {key}"
        ),
        {
            "u": delivery.user_id,
            "e": delivery.event_id,
            "w": delivery.endpoint_id,
            "error": error[:500],
            "retry": retry_in,
        },
    )

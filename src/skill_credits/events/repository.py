"""Every query of the events outbox and its webhook deliveries."""

from __future__ import annotations

import json
import secrets
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row

from skill_credits.db import Connection
from skill_credits.events.schemas import Event
from skill_credits.pagination import decode_cursor, keyset_page

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
    before: int | None,
    event_type: str | tuple[str, ...] | None,
    user_id: str | None,
) -> tuple[list[Event], str | None]:
    """``event_type``: one type, any of several, or None for every type."""
    rows, next_cursor = await keyset_page(
        conn, "events", EVENT_COLUMNS, {"type": event_type, "user_id": user_id}, before, limit
    )
    return [event_from_row(r) for r in rows], next_cursor


__all__ = ["decode_cursor"]


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
                " FROM webhook_endpoints w LEFT JOIN event_deliveries d ON d.endpoint_id = w.id"
                " GROUP BY w.id ORDER BY w.created_at"
            )
        )
    ).all()


async def claim_due(conn: Connection, batch: int) -> list[Row]:
    """Due deliveries, locked until the caller's transaction ends (a crash unlocks them)."""
    return (
        await conn.execute(
            text(
                "SELECT d.event_id::text AS event_id, d.endpoint_id::text AS endpoint_id,"
                "       d.attempts, w.url, w.secret, e.type, e.user_id, e.data::text AS data,"
                "       e.created_at"
                " FROM event_deliveries d"
                " JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.active"
                " JOIN events e ON e.id = d.event_id"
                " WHERE d.status = 'pending' AND d.next_attempt_at <= now()"
                " ORDER BY e.seq LIMIT :batch"
                " FOR UPDATE OF d SKIP LOCKED"
            ),
            {"batch": batch},
        )
    ).all()


async def mark_delivered(conn: Connection, event_id: str, endpoint_id: str) -> None:
    await conn.execute(
        text(
            "UPDATE event_deliveries SET status = 'delivered', attempts = attempts + 1,"
            " delivered_at = now(), last_error = NULL"
            " WHERE event_id = CAST(:e AS uuid) AND endpoint_id = CAST(:w AS uuid)"
        ),
        {"e": event_id, "w": endpoint_id},
    )


async def mark_failed(
    conn: Connection, event_id: str, endpoint_id: str, error: str, retry_in: float | None
) -> None:
    """``retry_in`` None: no attempts left, the delivery is dead-lettered."""
    await conn.execute(
        text(
            "UPDATE event_deliveries SET attempts = attempts + 1, last_error = :error,"
            " status = CASE WHEN CAST(:retry AS float8) IS NULL THEN 'dead' ELSE 'pending' END,"
            " next_attempt_at = now() + make_interval(secs => coalesce(CAST(:retry AS float8), 0))"
            " WHERE event_id = CAST(:e AS uuid) AND endpoint_id = CAST(:w AS uuid)"
        ),
        {"e": event_id, "w": endpoint_id, "error": error[:500], "retry": retry_in},
    )

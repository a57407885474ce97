"""Every query of spend limits: calls of the ledger's database functions
(``ledger/sql/limits.sql``), each under the user's lock, in autocommit. A limit comes
back as the JSON ``sc_limit_json`` makes, with ``spent`` and ``resets_at`` as of now."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import text

from skill_credits.db import Connection
from skill_credits.limits.schemas import Limit, LimitIn

_LIMIT = msgspec.json.Decoder(Limit)

CREATE = text(
    "SELECT outcome, lim::text AS lim FROM sc_limit_create(CAST(:user_id AS text),"
    " CAST(:member AS text), CAST(:skill AS text), CAST(:window AS text),"
    " CAST(:max_credits AS bigint))"
)
CHANGE = text(
    "SELECT sc_limit_change(CAST(:user_id AS text), CAST(:id AS uuid),"
    " CAST(:max_credits AS bigint))::text"
)
DELETE = text("SELECT sc_limit_delete(CAST(:user_id AS text), CAST(:id AS uuid))")
LIST = text(
    "SELECT sc_limit_json(l.id, l.user_id, l.member, s.name, l.period, l.max_credits,"
    "                     l.window_start, l.spent, l.created_at, clock_timestamp())::text"
    " FROM limits l LEFT JOIN skills s ON s.id = l.skill_id"
    " WHERE l.user_id = :user_id ORDER BY l.created_at, l.id"
)


def limit_from_json(value: str | bytes) -> Limit:
    return _LIMIT.decode(value)


async def create(conn: Connection, user_id: str, data: LimitIn) -> Any:
    """The outcome row: ``outcome`` (written, user_not_found, skill_not_found,
    limit_exists) and ``lim``."""
    params = {
        "user_id": user_id,
        "member": data.member,
        "skill": data.skill,
        "window": data.window,
        "max_credits": data.max_credits,
    }
    return (await conn.execute(CREATE, params)).one()


async def change(conn: Connection, user_id: str, limit_id: str, max_credits: int) -> Limit | None:
    params = {"user_id": user_id, "id": limit_id, "max_credits": max_credits}
    value = (await conn.execute(CHANGE, params)).scalar()
    return limit_from_json(value) if value is not None else None


async def delete(conn: Connection, user_id: str, limit_id: str) -> bool:
    return bool((await conn.execute(DELETE, {"user_id": user_id, "id": limit_id})).scalar())


async def of_user(conn: Connection, user_id: str) -> list[Limit]:
    rows = await conn.execute(LIST, {"user_id": user_id})
    return [limit_from_json(value) for (value,) in rows]

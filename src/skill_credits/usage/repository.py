"""Every query of usage: calls of ``ledger/sql/usage.sql`` and reads of a user's grants."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from skill_credits.db import Connection

NOW = text("SELECT clock_timestamp()")
# the parts sc_usage reads (rollups, log) summed by bucket and group, in the contract's order
USAGE = text(
    "SELECT start, grp, sum(charges)::bigint AS charges, sum(units)::bigint AS units,"
    " sum(consumed)::bigint AS consumed, sum(refunded)::bigint AS refunded,"
    " sum(paid_consumed)::bigint AS paid_consumed, sum(paid_refunded)::bigint AS paid_refunded"
    " FROM sc_usage(CAST(:from AS timestamptz), CAST(:to AS timestamptz),"
    " CAST(:interval AS text), CAST(:group AS text), CAST(:user_id AS text),"
    " CAST(:member AS text), CAST(:skill AS text))"
    ' GROUP BY start, grp ORDER BY start, grp COLLATE "C" NULLS FIRST'
)
# the n users who consumed most in the range (a month's buckets: the fewest rows to sum)
TOP_USERS = text(
    "SELECT grp, sum(charges)::bigint AS charges, sum(units)::bigint AS units,"
    " sum(consumed)::bigint AS consumed, sum(refunded)::bigint AS refunded"
    " FROM sc_usage(CAST(:from AS timestamptz), CAST(:to AS timestamptz), 'month', 'user',"
    " CAST(:user_id AS text), CAST(:member AS text), CAST(:skill AS text))"
    ' GROUP BY grp ORDER BY sum(consumed) DESC, grp COLLATE "C" LIMIT :n'
)
SKILL_EXISTS = text("SELECT EXISTS (SELECT 1 FROM skills WHERE name = :name)")
USER_EXISTS = text("SELECT EXISTS (SELECT 1 FROM users WHERE user_id = :user_id)")
EXPIRING = text(
    "SELECT id::text AS grant_id, remaining, expires_at FROM grants_now"
    " WHERE user_id = :user_id AND status = 'active' AND remaining > 0"
    "   AND expires_at > :now AND expires_at <= :until"
    " ORDER BY expires_at, id"
)
HORIZON = text("SELECT sc_usage_horizon()")
ROLL = text("SELECT sc_usage_roll(CAST(:horizon AS timestamptz), CAST(:step AS interval))")
REBUILD = text("SELECT sc_usage_rebuild()")
ROLLED_TO = text("SELECT rolled_to FROM usage_marks")
PROBLEMS = text("SELECT problem, hour, skill, detail FROM sc_usage_problems()")


async def now(conn: Connection) -> datetime:
    """The database's clock: what ``created_at`` of the log is read from."""
    return (await conn.execute(NOW)).scalar_one()


async def usage(
    conn: Connection,
    start: datetime,
    end: datetime,
    interval: str,
    group: str | None,
    user_id: str | None,
    member: str | None,
    skill: str | None,
) -> list[Any]:
    params = {
        "from": start,
        "to": end,
        "interval": interval,
        "group": group,
        "user_id": user_id,
        "member": member,
        "skill": skill,
    }
    return list(await conn.execute(USAGE, params))


async def top_users(
    conn: Connection,
    start: datetime,
    end: datetime,
    user_id: str | None,
    member: str | None,
    skill: str | None,
    n: int,
) -> list[Any]:
    params = {"from": start, "to": end, "user_id": user_id, "member": member, "skill": skill}
    return list(await conn.execute(TOP_USERS, params | {"n": n}))


async def skill_exists(conn: Connection, name: str) -> bool:
    return bool((await conn.execute(SKILL_EXISTS, {"name": name})).scalar())


async def user_exists(conn: Connection, user_id: str) -> bool:
    return bool((await conn.execute(USER_EXISTS, {"user_id": user_id})).scalar())


async def expiring(conn: Connection, user_id: str, now: datetime, until: datetime) -> list[Any]:
    params = {"user_id": user_id, "now": now, "until": until}
    return list(await conn.execute(EXPIRING, params))


async def horizon(conn: Connection) -> datetime:
    return (await conn.execute(HORIZON)).scalar_one()


async def roll(conn: Connection, horizon: datetime, step: timedelta) -> datetime | None:
    """One step of the rollups, in its own transaction (autocommit)."""
    return (await conn.execute(ROLL, {"horizon": horizon, "step": step})).scalar()


async def rebuild(conn: Connection) -> None:
    await conn.execute(REBUILD)


async def rolled_to(conn: Connection) -> datetime:
    return (await conn.execute(ROLLED_TO)).scalar_one()


async def problems(conn: Connection) -> list[str]:
    """reconcile: every hour whose rollups differ from the log they stand for."""
    rows = await conn.execute(PROBLEMS)
    return [
        f"{r.problem}: hour {r.hour.isoformat()}, skill {r.skill!r}"
        + (f", user {r.detail}" if r.detail else "")
        for r in rows
    ]

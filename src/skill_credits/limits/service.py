"""Spend limits: each write is one call of a database function, in autocommit, under
the user's lock (so it is ordered with the user's charges)."""

from __future__ import annotations

from skill_credits import errors
from skill_credits.db import Database
from skill_credits.ledger import repository as ledger_repo
from skill_credits.limits import repository as repo
from skill_credits.limits.schemas import Limit, LimitIn


async def create(db: Database, user_id: str, data: LimitIn) -> Limit:
    async with db.connect() as conn:
        row = await repo.create(conn, user_id, data)
    if row.outcome == "written":
        return repo.limit_from_json(row.lim)
    if row.outcome == "user_not_found":
        raise errors.user_not_found(user_id)
    if row.outcome == "skill_not_found":
        raise errors.skill_not_found(data.skill or "")
    if row.outcome == "limit_exists":
        raise errors.limit_exists(data.member, data.skill, data.window)
    raise RuntimeError(f"unknown limit outcome {row.outcome!r}")


async def of_user(db: Database, user_id: str) -> list[Limit]:
    """Every limit of the user with ``spent`` now (what expired is written off first, so
    an expired hold no longer counts); 404 if there is no such user."""
    async with db.connect() as conn:
        if not await ledger_repo.touch(conn, user_id):
            raise errors.user_not_found(user_id)
        return await repo.of_user(conn, user_id)


async def change(db: Database, user_id: str, limit_id: str, max_credits: int) -> Limit:
    async with db.connect() as conn:
        limit = await repo.change(conn, user_id, limit_id, max_credits)
    if limit is None:
        raise errors.limit_not_found(limit_id)
    return limit


async def delete(db: Database, user_id: str, limit_id: str) -> None:
    async with db.connect() as conn:
        deleted = await repo.delete(conn, user_id, limit_id)
    if not deleted:
        raise errors.limit_not_found(limit_id)

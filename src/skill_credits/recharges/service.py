"""Auto-recharge: each write is one call of a database function, in autocommit, under the
user's lock (so it is ordered with the user's charges, which make the requests). A route
that names a request by its id alone finds its user first (``ledger_repo.user_of``)."""

from __future__ import annotations

from datetime import datetime

from skill_credits import errors
from skill_credits.db import Connection, Database
from skill_credits.db.shards import ShardMap
from skill_credits.ledger import repository as ledger_repo
from skill_credits.ledger.service import Written, call_outcome
from skill_credits.recharges import repository as repo
from skill_credits.recharges.schemas import AutoRecharge, AutoRechargeIn, Recharge


async def set_rule(db: Database, user_id: str, data: AutoRechargeIn) -> AutoRecharge:
    async with db.connect() as conn:
        rule = await repo.set_rule(conn, user_id, data)
    if rule is None:
        raise errors.user_not_found(user_id)
    return rule


async def get_rule(db: Database, user_id: str) -> AutoRecharge:
    async with db.connect() as conn:
        outcome, rule = await repo.rule(conn, user_id)
    if outcome == "user_not_found":
        raise errors.user_not_found(user_id)
    if rule is None:
        raise errors.auto_recharge_not_found(user_id)
    return rule


async def rule_or_none(db: Database, user_id: str) -> AutoRecharge | None:
    """The rule, or None when the user has none (404 for an unknown user)."""
    try:
        return await get_rule(db, user_id)
    except errors.ApiError as exc:
        if exc.code == "auto_recharge_not_found":
            return None
        raise


async def delete_rule(db: Database, user_id: str) -> None:
    async with db.connect() as conn:
        outcome = await repo.delete_rule(conn, user_id)
    if outcome == "user_not_found":
        raise errors.user_not_found(user_id)
    if outcome == "auto_recharge_not_found":
        raise errors.auto_recharge_not_found(user_id)


async def _owner(conn: Connection, recharge_id: str, shards: ShardMap | None) -> str:
    """The user of the request (on Citus, asked of the node its id names)."""
    user_id = await ledger_repo.user_of(conn, "recharges", recharge_id, shards)
    if user_id is None:
        raise errors.recharge_not_found(recharge_id)
    return user_id


async def get(db: Database, recharge_id: str) -> Recharge:
    """The request as of now (one pending for 24 hours reads expired)."""
    shards = await db.shard_map()
    async with db.connect() as conn:
        user_id = await _owner(conn, recharge_id, shards)
        recharge = await repo.get(conn, user_id, recharge_id)
    if recharge is None:
        raise errors.recharge_not_found(recharge_id)
    return recharge


async def of_user(
    db: Database,
    user_id: str,
    status: str | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> tuple[list[Recharge], str | None]:
    async with db.connect() as conn:
        if not await ledger_repo.touch(conn, user_id):
            raise errors.user_not_found(user_id)
        return await repo.page(conn, user_id, status, before, limit)


async def fulfil(db: Database, recharge_id: str, reference: str | None) -> Written:
    """The purchase; a repeat answers it again (replayed), whatever its reference."""
    shards = await db.shard_map()
    async with db.connect() as conn:
        user_id = await _owner(conn, recharge_id, shards)
        row = await call_outcome(repo.fulfil(conn, user_id, recharge_id, reference))
    if row.outcome in ("written", "replay"):
        return Written(ledger_repo.transaction_from_row(row), replayed=row.outcome == "replay")
    if row.outcome == "recharge_not_pending":
        raise errors.recharge_not_pending(recharge_id)
    if row.outcome == "not_found":
        raise errors.recharge_not_found(recharge_id)
    raise RuntimeError(f"unknown fulfil outcome {row.outcome!r}")


async def fail(db: Database, recharge_id: str, reason: str) -> Recharge:
    """The request, failed (a repeat changes nothing and answers it as it is)."""
    shards = await db.shard_map()
    async with db.connect() as conn:
        user_id = await _owner(conn, recharge_id, shards)
        row = await repo.fail(conn, user_id, recharge_id, reason)
    if row.outcome in ("written", "repeat"):
        return repo.recharge_from_json(row.req)
    if row.outcome == "recharge_not_pending":
        raise errors.recharge_not_pending(recharge_id)
    if row.outcome == "not_found":
        raise errors.recharge_not_found(recharge_id)
    raise RuntimeError(f"unknown fail outcome {row.outcome!r}")

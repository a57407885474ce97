"""Events logic that is not a plain read of the outbox: a user's low-balance threshold,
a column of the ledger's ``users`` table, written through the ledger's repository."""

from __future__ import annotations

from skill_credits import errors
from skill_credits.db import Connection
from skill_credits.events.schemas import Threshold
from skill_credits.ledger import repository as ledger_repo


async def set_threshold(conn: Connection, user_id: str, threshold: int | None) -> Threshold:
    if not await ledger_repo.set_low_balance_threshold(conn, user_id, threshold):
        raise errors.user_not_found(user_id)
    return Threshold(user_id, threshold)

"""The hot path's asyncpg connection answers like SQLAlchemy's (``db.adapter.Statements``).

Users are made with 0 credits and no log rows, so the ledger stays reconciled."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from skill_credits.db.failures import constraint_name, sqlstate, unique_violation
from tests.support import servers
from tests.support.run import unique

INSERT_USER = text(
    "INSERT INTO users (user_id, credits) VALUES (:user_id, CAST(:credits AS bigint))"
    " RETURNING user_id, credits"
)


async def test_rows_read_by_attribute_and_none_when_nothing_matches(db) -> None:
    user = unique("stmt").lower()
    async with db.statements() as conn:
        row = (await conn.execute(INSERT_USER, {"user_id": user, "credits": 0})).first()
        assert (row.user_id, row.credits) == (user, 0)
        with pytest.raises(AttributeError):
            _ = row.no_such_column
        missing = text("SELECT credits FROM users WHERE user_id = :user_id")
        assert (await conn.execute(missing, {"user_id": user + "_x"})).first() is None
    # autocommit: the row is there for every other connection at once
    async with db.autocommit.connect() as other:
        found = await other.execute(missing, {"user_id": user})
        assert found.scalar_one() == 0


async def test_constraint_and_data_errors_are_raised_as_sqlalchemy_does(db) -> None:
    user = unique("stmt").lower()
    async with db.statements() as conn:
        await conn.execute(INSERT_USER, {"user_id": user, "credits": 0})
        with pytest.raises(sa_exc.IntegrityError) as duplicate:
            await conn.execute(INSERT_USER, {"user_id": user, "credits": 0})
        assert sqlstate(duplicate.value) == "23505"
        assert unique_violation(duplicate.value, "users_pkey")
        if not servers.citus():  # a Citus worker names the shard's constraint in its message
            assert constraint_name(duplicate.value) == "users_pkey"
        with pytest.raises(sa_exc.IntegrityError) as negative:
            await conn.execute(INSERT_USER, {"user_id": user + "_n", "credits": -1})
        assert sqlstate(negative.value) == "23514"  # CHECK (credits >= 0)
        overflow = text("SELECT CAST(:n AS bigint) * 10 AS n")
        with pytest.raises(sa_exc.DataError) as too_big:
            await conn.execute(overflow, {"n": 2**62})
        assert sqlstate(too_big.value) == "22003"
        # the connection is still usable after each error
        assert (await conn.execute(overflow, {"n": 2})).first().n == 20

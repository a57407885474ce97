"""A unique violation is recognised by SQLSTATE and by its constraint's name, with or
without the shard suffix a distributed database adds, from the error's field or, when it
sends none, from its message."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from skill_credits.db.failures import unique_violation


class Reported(Exception):
    """What asyncpg reports, as far as the check reads it."""

    def __init__(self, sqlstate: str, constraint_name: str | None, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.constraint_name = constraint_name


def error(sqlstate: str, name: str | None, message: str = "") -> sa_exc.IntegrityError:
    return sa_exc.IntegrityError("INSERT …", {}, Reported(sqlstate, name, message))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (error("23505", "transactions_idempotency"), True),
        (error("23505", "transactions_idempotency_102059"), True),
        (
            error(
                "23505",
                None,
                'duplicate key value violates unique constraint "transactions_idempotency_102059"',
            ),
            True,
        ),
        (error("23505", "transactions_idempotency_key"), False),  # another constraint
        (error("23505", "transactions_idempotency_x1"), False),
        (error("23505", None, 'violates unique constraint "transactions_pkey_102059"'), False),
        (error("23505", None, "no name anywhere"), False),
        (error("23514", "transactions_idempotency"), False),  # a CHECK, not a unique key
    ],
)
def test_a_unique_violation_is_known_by_state_and_name_or_prefix(exc, expected) -> None:
    assert unique_violation(exc, "transactions_idempotency") is expected

"""Telling a lost database (a clean 503) from a refused statement, and reading what a
constraint or data error names (its SQLSTATE, its constraint).

It imports no module of the package, so that ``errors`` can use it from anywhere.
"""

from __future__ import annotations

import re

import asyncpg
from sqlalchemy import exc as sa_exc

# SQLSTATE classes meaning "no usable server right now": 08 connection exception,
# 57P admin/crash shutdown and "cannot connect now" (starting up, shutting down).
UNAVAILABLE_SQLSTATES = ("08", "57P")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means PostgreSQL could not be reached or the connection broke."""
    if isinstance(exc, sa_exc.TimeoutError):  # pool checkout timed out
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if (sqlstate(exc) or "").startswith(UNAVAILABLE_SQLSTATES):
            return True
        return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) and not isinstance(
            exc, sa_exc.IntegrityError
        )
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError)):
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith(UNAVAILABLE_SQLSTATES) or isinstance(
            exc, (asyncpg.InterfaceError, asyncpg.PostgresConnectionError)
        )
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def constraint_name(exc: sa_exc.DBAPIError) -> str | None:
    """The name of the constraint an IntegrityError reports, when asyncpg gives it."""
    return getattr(exc.orig, "constraint_name", None) or getattr(
        getattr(exc.orig, "__cause__", None), "constraint_name", None
    )


def sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(
        getattr(exc.orig, "__cause__", None), "sqlstate", None
    )


def unique_violation(exc: sa_exc.DBAPIError, constraint: str) -> bool:
    """True when ``exc`` is a unique violation (SQLSTATE 23505) of ``constraint``: named so,
    or with a shard's suffix (``transactions_idempotency_102059``), as a distributed
    database names it, in the error's field or, when it sends none, in its message."""
    if sqlstate(exc) != "23505":
        return False
    named = re.compile(rf"{re.escape(constraint)}(_\d+)?")
    name = constraint_name(exc)
    if name is not None:
        return named.fullmatch(name) is not None
    return re.search(rf'"{named.pattern}"', str(exc.orig)) is not None
